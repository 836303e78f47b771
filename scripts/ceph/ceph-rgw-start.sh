#!/usr/bin/env bash
# Single-node Ceph Pacific (Debian 12: 16.2.x) with the RADOS Gateway S3 API on 127.0.0.1.
#   1 ceph-mon + 1 ceph-osd (bluestore on a sparse file, or memstore) [+ optional ceph-mgr] + radosgw (beast).
# Installs the Debian packages if missing, writes PID files under $CEPH_S3_DIR/pids, waits until
# S3 answers, creates an S3 user with fixed keys and a bucket, and writes $CEPH_S3_DIR/s3.env.
# Stop with ceph-rgw-stop.sh (kills exactly the PIDs recorded here). Every wait loop is bounded.
# nubis's test suite runs this from tests/contract/conftest.py (free ports, a tmp CEPH_S3_DIR,
# memstore); carried over from ../shared/reference/objectstore/.
#
# Knobs (env):  CEPH_S3_DIR=/tmp/ceph-s3   CEPH_S3_PORT=7480   CEPH_MON_PORT=3300
#               CEPH_OSD_STORE=bluestore|memstore   CEPH_OSD_SIZE_GB=20   CEPH_WITH_MGR=0|1
#               CEPH_STORAGE_CLASSES="STANDARD_IA GLACIER ..." (set empty for STANDARD only)
#               CEPH_S3_TLS_PORT=7443 (optional: also serve HTTPS with a self-signed cert, $CEPH_S3_DIR/tls/rgw.crt)
#               S3_ACCESS_KEY / S3_SECRET_KEY / S3_BUCKET   PYTHON=python3 (needs boto3 for the bucket)
set -euo pipefail

DIR=${CEPH_S3_DIR:-/tmp/ceph-s3}
PORT=${CEPH_S3_PORT:-7480}
MON_PORT=${CEPH_MON_PORT:-3300}
OSD_STORE=${CEPH_OSD_STORE:-bluestore}
OSD_SIZE_GB=${CEPH_OSD_SIZE_GB:-20}
WITH_MGR=${CEPH_WITH_MGR:-0}
TLS_PORT=${CEPH_S3_TLS_PORT:-}
AK=${S3_ACCESS_KEY:-ceph-test-access}
SK=${S3_SECRET_KEY:-ceph-test-secret-key-0123456789}
BUCKET=${S3_BUCKET:-test-bucket}
PY=${PYTHON:-python3}
STORAGE_CLASSES=${CEPH_STORAGE_CLASSES-STANDARD_IA ONEZONE_IA INTELLIGENT_TIERING GLACIER GLACIER_IR DEEP_ARCHIVE REDUCED_REDUNDANCY}
T0=$EPOCHREALTIME
log() { printf '[ceph-rgw %6.1fs] %s\n' "$(awk "BEGIN{print $EPOCHREALTIME - $T0}")" "$*"; }
HERE=$(cd "$(dirname "$0")" && pwd)
die() {
  log "ERROR: $*"
  for f in "$DIR"/log/*.log "$DIR"/log/*.out; do [ -s "$f" ] && { echo "--- tail $f"; tail -n 15 "$f"; }; done
  # stop whatever this run started (PID files only), keep the logs
  "$HERE/stop-pids.sh" "$DIR/pids" radosgw:radosgw ceph-mgr:ceph-mgr ceph-osd:ceph-osd ceph-mon:ceph-mon
  exit 1
}
trap 'die "command failed at line $LINENO"' ERR

# ---------------------------------------------------------------- install (Debian packages)
PKGS="radosgw ceph-mon ceph-osd curl openssl"   # curl: readiness probe; openssl: TLS cert
[ "$WITH_MGR" = 1 ] && PKGS="$PKGS ceph-mgr"
need=""
for p in $PKGS; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need="$need $p"; done
if [ -n "$need" ]; then
  log "apt-get install$need"
  export DEBIAN_FRONTEND=noninteractive
  # never let package scripts start system services (no-op if a policy already exists)
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; own_policy=1; fi
  # Bounded: another test run may hold the dpkg lock (it waits for it), a mirror may hang.
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=240 $need >/dev/null
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  log "installed"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }   # something already listens there
for p in "$PORT" "$MON_PORT" ${TLS_PORT:+"$TLS_PORT"}; do port_busy "$p" && { log "ERROR: 127.0.0.1:$p is already in use"; exit 1; }; done

# ---------------------------------------------------------------- fresh state directory
if [ -e "$DIR/pids" ] && ls "$DIR"/pids/*.pid >/dev/null 2>&1; then
  for f in "$DIR"/pids/*.pid; do kill -0 "$(cat "$f")" 2>/dev/null && die "already running (pid file $f); run ceph-rgw-stop.sh first"; done
fi
rm -rf "$DIR"; mkdir -p "$DIR"/{pids,run,log,mon,osd,mgr,rgw}
# tcp_nodelay: without it a small GET body waits for the client's delayed ACK (40 ms per read).
FRONTEND="beast endpoint=127.0.0.1:$PORT tcp_nodelay=1"
if [ -n "$TLS_PORT" ]; then
  mkdir -p "$DIR/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=127.0.0.1" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$DIR/tls/rgw.key" -out "$DIR/tls/rgw.crt" 2>/dev/null
  FRONTEND="$FRONTEND ssl_endpoint=127.0.0.1:$TLS_PORT ssl_certificate=$DIR/tls/rgw.crt ssl_private_key=$DIR/tls/rgw.key"
fi
CONF=$DIR/ceph.conf
FSID=$(cat /proc/sys/kernel/random/uuid)
cat >"$CONF" <<EOF
[global]
fsid = $FSID
mon_host = [v2:127.0.0.1:$MON_PORT]
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
# with auth 'none' only the crc wire mode exists; daemons such as radosgw default to 'secure' towards the mon
ms_mon_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_client_mode = crc
ms_cluster_mode = crc
ms_service_mode = crc
run_dir = $DIR/run
admin_socket = $DIR/run/\$name.asok
log_file = $DIR/log/\$name.log
mon_data = $DIR/mon/\$cluster-\$id
osd_data = $DIR/osd/\$cluster-\$id
mgr_data = $DIR/mgr/\$cluster-\$id
rgw_data = $DIR/rgw/\$cluster-\$id
keyring = $DIR/keyring
# one OSD, no replication
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# commit map changes faster (each RGW pool creation is one osdmap epoch)
paxos_propose_interval = 0.1
paxos_min_wait = 0.01
# small machine
osd_objectstore = $OSD_STORE
bluestore_block_size = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
memstore_device_bytes = $((OSD_SIZE_GB * 1024 * 1024 * 1024))
osd_memory_target = 1073741824
osd_op_num_shards = 2
osd_op_num_threads_per_shard = 1
mon_osd_full_ratio = .97
mon_osd_backfillfull_ratio = .96
mon_osd_nearfull_ratio = .95
debug_ms = 0
log_to_stderr = false
err_to_stderr = true

[client.rgw.a]
rgw_frontends = $FRONTEND
rgw_thread_pool_size = 64
# allow SSE over plain http (CI only) and give SSE-KMS a static test key
rgw_crypt_require_ssl = false
rgw_crypt_s3_kms_backend = testing
rgw_crypt_s3_kms_encryption_keys = testkey-1=$(head -c 32 /dev/urandom | base64)
rgw_enable_usage_log = false
EOF
export CEPH_CONF=$CONF

# ---------------------------------------------------------------- mon
log "mkfs mon"
ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DIR/monmap" >/dev/null
mkdir -p "$DIR/mon/ceph-a"
ceph-mon -c "$CONF" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring"
ceph-mon -c "$CONF" -i a -f </dev/null >>"$DIR/log/mon.a.out" 2>&1 &
echo $! >"$DIR/pids/ceph-mon.pid"
ok=0; for _ in $(seq 1 60); do
  if timeout 10 ceph -c "$CONF" --connect-timeout 5 mon stat >/dev/null 2>&1; then ok=1; break; fi
  kill -0 "$(cat "$DIR/pids/ceph-mon.pid")" 2>/dev/null || die "ceph-mon died"; sleep 0.5
done; [ $ok = 1 ] || die "mon not up"
log "mon up (pid $(cat "$DIR/pids/ceph-mon.pid"))"

# ---------------------------------------------------------------- mgr (optional; RGW I/O works without it)
if [ "$WITH_MGR" = 1 ]; then
  mkdir -p "$DIR/mgr/ceph-x"
  ceph-mgr -c "$CONF" -i x -f </dev/null >>"$DIR/log/mgr.x.out" 2>&1 &
  echo $! >"$DIR/pids/ceph-mgr.pid"
  log "mgr started (pid $!)"
fi

# ---------------------------------------------------------------- osd
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_ID=$(timeout 30 ceph -c "$CONF" osd new "$OSD_UUID")
[ "$OSD_ID" = 0 ] || die "unexpected osd id '$OSD_ID'"
mkdir -p "$DIR/osd/ceph-0"
log "mkfs osd.0 ($OSD_STORE)"
timeout 120 ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" >>"$DIR/log/osd.0.out" 2>&1 || die "osd mkfs failed"
ceph-osd -c "$CONF" -i 0 -f </dev/null >>"$DIR/log/osd.0.out" 2>&1 &
echo $! >"$DIR/pids/ceph-osd.pid"
ok=0; for _ in $(seq 1 120); do
  if timeout 10 ceph -c "$CONF" --connect-timeout 5 osd dump 2>/dev/null | grep -q '^osd.0 up'; then ok=1; break; fi
  kill -0 "$(cat "$DIR/pids/ceph-osd.pid")" 2>/dev/null || die "ceph-osd died"; sleep 0.5
done; [ $ok = 1 ] || die "osd.0 not up"
log "osd.0 up (pid $(cat "$DIR/pids/ceph-osd.pid"))"

# ---------------------------------------------------------------- S3 user (creates the RGW pools/zone too)
timeout 120 radosgw-admin -c "$CONF" -n client.rgw.a user create --uid=ci --display-name="CI user" \
  --access-key="$AK" --secret-key="$SK" >"$DIR/log/user-create.json" 2>>"$DIR/log/radosgw-admin.err" || die "user create failed"
log "user created"

# ---------------------------------------------------------------- storage classes (labels on the default placement)
# RGW rejects unknown x-amz-storage-class values (400 InvalidArgument); hospitals' clusters define their own.
# All classes here share the STANDARD data pool: same bytes, only the label differs (no GLACIER restore semantics).
for sc in $STORAGE_CLASSES; do
  timeout 60 radosgw-admin -c "$CONF" -n client.rgw.a zonegroup placement add --rgw-zonegroup default \
    --placement-id default-placement --storage-class "$sc" >/dev/null 2>>"$DIR/log/radosgw-admin.err"
  timeout 60 radosgw-admin -c "$CONF" -n client.rgw.a zone placement add --rgw-zone default \
    --placement-id default-placement --storage-class "$sc" --data-pool default.rgw.buckets.data >/dev/null 2>>"$DIR/log/radosgw-admin.err"
done
[ -n "$STORAGE_CLASSES" ] && log "storage classes: STANDARD $STORAGE_CLASSES"

# ---------------------------------------------------------------- radosgw
radosgw -c "$CONF" -n client.rgw.a -f </dev/null >>"$DIR/log/rgw.a.out" 2>&1 &
echo $! >"$DIR/pids/radosgw.pid"
ok=0; for _ in $(seq 1 120); do
  curl -s --max-time 2 "http://127.0.0.1:$PORT/" 2>/dev/null | grep -q ListAllMyBucketsResult && { ok=1; break; }
  kill -0 "$(cat "$DIR/pids/radosgw.pid")" 2>/dev/null || die "radosgw died"; sleep 0.5
done; [ $ok = 1 ] || die "radosgw not answering on 127.0.0.1:$PORT"
log "radosgw up (pid $(cat "$DIR/pids/radosgw.pid"))"

# ---------------------------------------------------------------- env file + bucket
cat >"$DIR/s3.env" <<EOF
export S3_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=$AK
export AWS_SECRET_ACCESS_KEY=$SK
export AWS_DEFAULT_REGION=us-east-1
export S3_BUCKET=$BUCKET
EOF
[ -n "$TLS_PORT" ] && printf 'export S3_TLS_ENDPOINT_URL=https://127.0.0.1:%s\nexport S3_TLS_CA_BUNDLE=%s\n' "$TLS_PORT" "$DIR/tls/rgw.crt" >>"$DIR/s3.env"
"$PY" -c 'import boto3' 2>/dev/null || die "$PY has no boto3 (set PYTHON to a Python that has it)"
timeout 120 "$PY" - "$PORT" "$AK" "$SK" "$BUCKET" <<'EOF'
import sys, boto3
from botocore.config import Config
port, ak, sk, bucket = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=ak,
                  aws_secret_access_key=sk, region_name="us-east-1",
                  config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 10},
                                request_checksum_calculation="when_required",
                                response_checksum_validation="when_required"))
for i in range(30):
    try:
        s3.create_bucket(Bucket=bucket); break
    except s3.exceptions.BucketAlreadyOwnedByYou:
        break
    except Exception as e:  # PGs may still be peering right after start
        import time; time.sleep(1); err = e
else:
    raise SystemExit(f"create_bucket failed: {err}")
s3.put_object(Bucket=bucket, Key="_ready", Body=b"ok")
assert s3.get_object(Bucket=bucket, Key="_ready")["Body"].read() == b"ok"
s3.delete_object(Bucket=bucket, Key="_ready")
EOF
log "bucket '$BUCKET' ready; source $DIR/s3.env"
