#!/usr/bin/env bash
# A throw-away PostgreSQL server on 127.0.0.1 for tests and benchmarks, from Debian's packages.
# Installs `postgresql` if missing (without starting Debian's own cluster), runs initdb as the
# `postgres` user in $PG_DIR (C collation, UTF-8: byte-wise ordering like SQLite, and LIKE
# prefixes that use plain b-tree indexes), starts the server on $PG_PORT with its socket in
# $PG_DIR, creates database $PG_DB, and writes $PG_DIR/pg.env with the URL. Every wait is bounded.
# Stop with pg-stop.sh. The suite runs this from tests/conftest.py.
#
# Knobs (env): PG_DIR (required; created, owned by postgres)  PG_PORT=55432  PG_DB=nubis
#              PG_FSYNC=on|off (off only for throw-away test data)  PG_MAX_CONNECTIONS=200
set -euo pipefail

DIR=${PG_DIR:?set PG_DIR}
PORT=${PG_PORT:-55432}
DB=${PG_DB:-nubis}
FSYNC=${PG_FSYNC:-on}
MAXCONN=${PG_MAX_CONNECTIONS:-200}
log() { printf '[postgres] %s\n' "$*"; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  log "apt-get install postgresql"
  export DEBIAN_FRONTEND=noninteractive
  # Debian's package starts its own cluster on 5432 unless told not to.
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  timeout 600 apt-get update -qq
  timeout 900 apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  [ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

mkdir -p "$DIR"
[ "$(id -u)" = 0 ] && chown postgres: "$DIR"
chmod 0700 "$DIR"
if [ ! -s "$DIR/data/PG_VERSION" ]; then
  as_pg "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --encoding=UTF8 --locale=C >"$DIR/initdb.log" 2>&1 \
    || { cat "$DIR/initdb.log"; exit 1; }
fi
cat >"$DIR/data/postgresql.auto.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DIR'
max_connections = $MAXCONN
fsync = $FSYNC
shared_buffers = '256MB'
logging_collector = off
CONF
if ! as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start >/dev/null; then
  tail -n 30 "$DIR/server.log"
  grep -q "could not bind\|already in use" "$DIR/server.log" && echo "port $PORT already in use"
  exit 1
fi
for _ in $(seq 1 60); do
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break
  sleep 0.5
done
as_pg "$BIN/psql" -h "$DIR" -p "$PORT" -U postgres -d postgres -qtAc \
  "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
  || as_pg "$BIN/createdb" -h "$DIR" -p "$PORT" -U postgres "$DB"
echo "PG_URL=postgresql://postgres@127.0.0.1:$PORT/$DB" >"$DIR/pg.env"
echo "PG_BIN=$BIN" >>"$DIR/pg.env"
log "ready on 127.0.0.1:$PORT, database $DB"
