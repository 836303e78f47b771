"""A real Ceph RADOS Gateway for the session, started and stopped by the test suite itself.

``scripts/ceph/ceph-rgw-start.sh`` installs Debian's Ceph packages when they are missing (about
20 s, once per machine), then starts one monitor, one OSD and radosgw (about 5 s) on free ports,
serving S3 over HTTP and HTTPS (its own CA in ``tls/``). The OSD uses memstore: the same RGW
and OSD code as production, with the objects kept in memory, which halves the start time; set
``NUBIS_TEST_CEPH_OSD_STORE=bluestore`` to run on a (sparse) disk file instead.

A start that fails is a test failure carrying the script's log, never a skip: an S3 backend
that was not tested must not look like one that passed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from contract import Ceph

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "ceph"
# The first start on a clean machine installs packages (apt-get is bounded in the script).
_START_TIMEOUT = 1200
_STOP_TIMEOUT = 120


def _free_ports(count: int) -> list[int]:
    # Held open together so the ports differ; a port may still be taken before Ceph binds it,
    # which the start script reports ("already in use") and the fixture retries.
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def _read_env(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        if name:
            env[name.strip()] = value.strip()
    return env


def _stop(ceph_dir: Path, log: Path) -> None:
    with log.open("ab") as out:
        subprocess.run(
            ["bash", str(SCRIPTS / "ceph-rgw-stop.sh")],
            env={**os.environ, "CEPH_S3_DIR": str(ceph_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=_STOP_TIMEOUT,
            check=False,
        )


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ceph]:
    """One Ceph RGW for the whole session; tests keep apart by key prefix.

    Its credentials are put in the environment (AWS_ACCESS_KEY_ID...), the way a deployment
    gives them to nubis, so stores built here and ``nubis serve`` processes started by the
    tests find them through boto3's usual chain.
    """
    base = tmp_path_factory.mktemp("ceph")
    # Short: Ceph's admin sockets live under it, and a UNIX socket path has at most 107 bytes.
    ceph_dir = base / "c"
    log = base / "ceph-rgw.log"
    env = {
        **os.environ,
        "CEPH_S3_DIR": str(ceph_dir),
        "CEPH_OSD_STORE": os.environ.get("NUBIS_TEST_CEPH_OSD_STORE", "memstore"),
        "CEPH_OSD_SIZE_GB": "4",
        # Only the classes the tier tests use: each one costs two radosgw-admin runs.
        "CEPH_STORAGE_CLASSES": "STANDARD_IA GLACIER",
        "PYTHON": sys.executable,
    }
    started = False
    for _ in range(3):
        http, tls, mon = _free_ports(3)
        env.update(CEPH_S3_PORT=str(http), CEPH_S3_TLS_PORT=str(tls), CEPH_MON_PORT=str(mon))
        try:
            with log.open("ab") as out:
                result = subprocess.run(
                    ["bash", str(SCRIPTS / "ceph-rgw-start.sh")],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=_START_TIMEOUT,
                    check=False,
                )
        except subprocess.TimeoutExpired:
            _stop(ceph_dir, log)
            pytest.fail(f"Ceph RGW did not start in {_START_TIMEOUT} s:\n{log.read_text()}")
        started = result.returncode == 0
        if started or "already in use" not in log.read_text():
            break
    if not started:
        _stop(ceph_dir, log)
        pytest.fail(f"Ceph RGW did not start; the start script's log:\n{log.read_text()}")
    try:
        s3 = _read_env(ceph_dir / "s3.env")
        instance = Ceph(
            dir=ceph_dir,
            endpoint=s3["S3_ENDPOINT_URL"],
            tls_endpoint=s3["S3_TLS_ENDPOINT_URL"],
            ca_bundle=s3["S3_TLS_CA_BUNDLE"],
            bucket=s3["S3_BUCKET"],
            access_key=s3["AWS_ACCESS_KEY_ID"],
            secret_key=s3["AWS_SECRET_ACCESS_KEY"],
            region=s3["AWS_DEFAULT_REGION"],
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", instance.access_key)
            mp.setenv("AWS_SECRET_ACCESS_KEY", instance.secret_key)
            mp.setenv("AWS_DEFAULT_REGION", instance.region)
            mp.delenv("AWS_PROFILE", raising=False)
            mp.delenv("AWS_SESSION_TOKEN", raising=False)
            yield instance
    finally:
        _stop(ceph_dir, log)


@pytest.fixture
def new_bucket(ceph: Ceph) -> Iterator[Callable[[str], str]]:
    """Makes buckets of the test's own on the session's Ceph (tier buckets): ``new_bucket("cold")``
    returns a fresh name; each is emptied and removed after the test."""
    client = ceph.client()
    made: list[str] = []

    def make(purpose: str) -> str:
        name = f"nubis-{purpose}-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        made.append(name)
        return name

    yield make
    for name in made:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", ()):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)
