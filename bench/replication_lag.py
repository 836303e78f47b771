"""Replication to a second nubis: lag under steady ingest, catch-up after an outage, RPO and RTO
(issue 13, docs/replication.md).

Two ``nubis serve`` on loopback, each with one worker: a primary with ``replicate_to`` and a
read-only replica (``replica_of``). Objects are 0.5 MB CT (512x512x16 bit, nubis.tools.synth),
one per STOW-RS request, the SOP Instance UID of one template changed per copy.

1. Steady ingest at ``--rate`` objects/s for ``--seconds``. The lag of each object is the
   replica's commit time minus the primary's (``instances.created_at`` of both indexes, the
   same clock): p50, p95, max. The backlog (outbox rows: acknowledged, not yet at the replica)
   is sampled every 0.1 s: what a loss of the primary at that moment would lose (RPO).
2. Outage: the replica stopped for ``--outage`` seconds of the same ingest, then started
   again; the catch-up rate is the backlog over the time from its ready answer to an empty
   outbox (no operator step between), and the sending's own rate (first to last arrival).
3. RTO: ``nubis replication promote --yes`` on the replica's data, then a client's STOW-RS
   until the replica takes it; reported as the command's time plus the wait.

    .venv/bin/python bench/replication_lag.py --rate 20 --seconds 60 --outage 120
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

from nubis.tools.synth import make_ct_series

TOKEN = "nubis-bench-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UID_ROOT = "1.2.826.0.1.3680043.8.498.78."
DURABLE = ["true"]  # --not-durable: "false" (no fsync before an answer, on both sites)


class Server:
    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.data_dir, self.port, self.env = data_dir, port, env
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start; seconds until /-/ready answers 200."""
        started = time.monotonic()
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nubis", "serve", "--data-dir", str(self.data_dir),
             "--http-port", str(self.port), "--set", "log_level=warning",
             "--set", f"durable={DURABLE[0]}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "NUBIS_ADMIN_TOKEN": TOKEN, "NUBIS_WORKERS": "1",
                 "NUBIS_DIMSE_PORT": "0", **self.env},
        )  # fmt: skip
        while time.monotonic() - started < 120:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise SystemExit(f"nubis serve at {self.data_dir} did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)


def _replicator_key(replica: Server) -> str:
    """An API key of user ``replicator``, an admin of the replica: the primary's credential
    there (the bench's own admin key stays a client's, refused until promotion)."""
    from nubis.index.database import Index
    from nubis.security.users import UserStore

    index = Index(f"sqlite:///{(replica.data_dir / 'index.sqlite').resolve()}")
    index.open()
    try:
        users = UserStore(index)
        users.add_user("replicator", roles="admin")
        return users.create_api_key("replicator", expires_in_days=None)[1]
    finally:
        index.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _query(server: Server, sql: str) -> list[tuple[Any, ...]]:
    uri = f"file:{(server.data_dir / 'index.sqlite').resolve()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        return conn.execute(sql).fetchall()


def _outbox(server: Server) -> int:
    return int(_query(server, "SELECT count(*) FROM replication_outbox")[0][0])


def _stow(client: httpx.Client, server: Server, data: bytes) -> int:
    boundary = "nubisbenchboundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return client.post(
        f"{server.url}/dicom-web/studies",
        content=body,
        headers={**AUTH, "Content-Type": content_type},
        timeout=120,
    ).status_code


class Copies:
    """The template under new SOP Instance UIDs of its UID's length."""

    def __init__(self, template: Path) -> None:
        import pydicom

        self.data = template.read_bytes()
        self.uid = str(pydicom.dcmread(template, stop_before_pixels=True).SOPInstanceUID)
        self.count = 0

    def next(self, tag: str) -> tuple[str, bytes]:
        prefix = f"{UID_ROOT}{tag}.{self.count}."
        self.count += 1
        uid = (prefix + "9" * len(self.uid))[: len(self.uid)]
        return uid, self.data.replace(self.uid.encode(), uid.encode())


def _commit_times(server: Server) -> dict[str, int]:
    return dict(_query(server, "SELECT sop_instance_uid, created_at FROM instances"))  # type: ignore[arg-type]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _wait(condition: Any, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise SystemExit(f"not within {timeout} s")


def _ingest(
    primary: Server, copies: Copies, tag: str, rate: float, seconds: float
) -> tuple[list[str], int, float]:
    """STOW-RS one object at a time at ``rate`` a second for ``seconds`` (as fast as they go
    when the primary cannot keep up): the UIDs acknowledged, how many refused, the rate."""
    sent: list[str] = []
    refused = 0
    started = time.monotonic()
    with httpx.Client() as client:
        n = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = started + n / rate
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            uid, data = copies.next(tag)
            if _stow(client, primary, data) == 200:
                sent.append(uid)
            else:
                refused += 1
            n += 1
    return sent, refused, len(sent) / elapsed


def steady(
    primary: Server, replica: Server, copies: Copies, rate: float, seconds: float
) -> dict[str, Any]:
    backlog: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            backlog.append(_outbox(primary))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent, refused, achieved = _ingest(primary, copies, "1", rate, seconds)
    _wait(lambda: _outbox(primary) == 0, 300)
    done.set()
    sampler.join()
    at_primary, at_replica = _commit_times(primary), _commit_times(replica)
    lags = [(at_replica[u] - at_primary[u]) / 1000 for u in sent if u in at_replica]
    assert len(lags) == len(sent), "an acknowledged object is missing at the replica"
    return {
        "objects": len(sent),
        "refused": refused,
        "rate_achieved_per_s": round(achieved, 1),
        "lag_s": {
            "p50": round(statistics.median(lags), 3),
            "p95": round(_percentile(lags, 0.95), 3),
            "max": round(max(lags), 3),
        },
        "backlog_objects": {
            "p50": _percentile([float(b) for b in backlog], 0.5),
            "p95": _percentile([float(b) for b in backlog], 0.95),
            "max": max(backlog),
        },
    }


def outage(
    primary: Server, replica: Server, copies: Copies, rate: float, seconds: float
) -> dict[str, Any]:
    """The replica down for ``seconds`` of ingest at ``rate``, then started again."""
    replica.stop()
    sent, _, achieved = _ingest(primary, copies, "2", rate, seconds)
    backlog = _outbox(primary)
    restart = replica.start()
    drain = _wait(lambda: _outbox(primary) == 0, 3600)
    arrived = [t for uid, t in _commit_times(replica).items() if uid in set(sent)]
    sending = (max(arrived) - min(arrived)) / 1000
    return {
        "seconds_down": round(seconds + restart, 1),
        "objects": len(sent),
        "ingest_while_down_per_s": round(achieved, 1),
        "backlog_at_restart": backlog,
        "replica_restart_s": round(restart, 2),
        "drained_s_after_ready": round(drain, 2),
        "catch_up_objects_per_s": round(backlog / drain, 1),
        "catch_up_mb_per_s": round(backlog * len(copies.data) / 1e6 / drain, 1),
        # First to last arrival at the replica: the rate of the sending itself, the probe's
        # backoff (up to replicate_retry_max_seconds) left out.
        "sending_objects_per_s": round(len(arrived) / sending, 1) if sending else None,
    }


def promotion(replica: Server, copies: Copies) -> dict[str, Any]:
    _, data = copies.next("3")
    with httpx.Client() as client:
        assert _stow(client, replica, data) == 403, "a client's store before promotion"
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "nubis", "replication", "promote", "--yes",
         "--data-dir", str(replica.data_dir), "--set", f"durable={DURABLE[0]}"],
        env={**os.environ, **replica.env}, check=True, capture_output=True,
    )  # fmt: skip
    command = time.monotonic() - started
    with httpx.Client() as client:
        served = _wait(lambda: _stow(client, replica, data) == 200, 30)
    return {
        "promote_command_s": round(command, 2),
        "first_client_store_after_s": round(served, 2),
        "rto_s": round(command + served, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20, help="objects/s of steady ingest")
    parser.add_argument("--seconds", type=float, default=30, help="length of steady ingest")
    parser.add_argument("--outage", type=float, default=60, help="seconds of ingest while down")
    parser.add_argument(
        "--not-durable", action="store_true", help="durable=false on both sites (no fsync)"
    )
    args = parser.parse_args()
    if args.not_durable:
        DURABLE[0] = "false"
    root = Path(tempfile.mkdtemp(prefix="nubis-bench-replication-"))
    primary_port = _free_port()
    replica = Server(
        root / "replica",
        _free_port(),
        {"NUBIS_REPLICA_OF": f"http://127.0.0.1:{primary_port}"},  # replica_writer: replicator
    )
    primary = Server(root / "primary", primary_port, {})
    try:
        [template] = make_ct_series(root / "template", n_instances=1, seed=5)
        copies = Copies(template)
        replica.start()
        primary.env = {
            "NUBIS_REPLICATE_TO": f"{replica.url}/dicom-web",
            "NUBIS_REPLICATE_API_KEY": _replicator_key(replica),
            "NUBIS_REPLICATE_EVERY_SECONDS": "1",
            "NUBIS_REPLICATE_RETRY_MAX_SECONDS": "2",
        }
        primary.start()
        figures: dict[str, Any] = {
            "object_mb": round(len(copies.data) / 1e6, 3),
            "durable": DURABLE[0],
        }
        figures["steady"] = steady(primary, replica, copies, args.rate, args.seconds)
        figures["outage"] = outage(primary, replica, copies, args.rate, args.outage)
        figures["promotion"] = promotion(replica, copies)
        figures["cpus"] = os.cpu_count()
        print(json.dumps(figures, indent=1))
    finally:
        primary.stop()
        replica.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
