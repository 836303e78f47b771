"""How associations are run (nubis.dimse.reactor, .listener, .server): idle associations cost
no CPU, the workers share the associations evenly, and a TLS peer that never finishes its
handshake holds up no one else."""

from __future__ import annotations

import collections
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pynetdicom import AE as ApplicationEntity
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from integration.dimse_helpers import AE, free_port, need_dcmtk, run


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (the worker processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, grew = {pid}, True
    while grew:
        grew = False
        for p, (ppid, _) in stats.items():
            if ppid in tree and p not in tree:
                tree.add(p)
                grew = True
    return sum(stats[p][1] for p in tree if p in stats)


def test_idle_associations_cost_no_cpu(server_factory) -> None:  # type: ignore[no-untyped-def]
    """pynetdicom's threads poll every millisecond (two per association); nubis's block until
    there is something to do, so open but idle associations leave the server idle."""
    port = free_port()
    server = server_factory("dimse-idle", "--dimse-port", str(port))
    ae = ApplicationEntity(ae_title="IDLE")
    ae.add_requested_context(Verification)
    assocs = [ae.associate("127.0.0.1", port, ae_title=AE) for _ in range(6)]
    try:
        assert all(a.is_established for a in assocs)
        time.sleep(0.5)  # let the start-up work settle
        before = _tree_cpu(server.process.pid)
        time.sleep(3)
        used = _tree_cpu(server.process.pid) - before
        # Polling cost 0.76 s here (six associations, 3 s: 4% of a core each); now ~0.
        assert used < 0.3, f"6 idle associations used {used:.2f} s of server CPU in 3 s"
        for a in assocs:
            status = a.send_c_echo()
            assert status is not None and status.Status == 0
    finally:
        for a in assocs:
            a.release()
        ae.shutdown()


def _owners(port: int) -> list[int]:
    """PIDs owning the established server side of connections to ``port`` (ss, iproute2)."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [int(pid) for pid in re.findall(r"pid=(\d+)", out)]


def test_associations_spread_over_workers(server_factory) -> None:  # type: ignore[no-untyped-def]
    """The workers accept from one shared socket, and a busy one lets an idle one go first:
    four associations on two workers go two and two (with a socket per worker, SO_REUSEPORT,
    the kernel's hash put three on one worker in most runs)."""
    if shutil.which("ss") is None:
        pytest.skip(reason="ss (iproute2) is needed to see which process holds a connection")
    port = free_port()
    server_factory("dimse-spread", "--dimse-port", str(port), "--workers", "2")
    # /-/ready answers once one worker is up; wait for the second to hold the socket too.
    deadline = time.monotonic() + 20
    while True:
        listening = subprocess.run(
            ["ss", "-tlnpH", f"( sport = :{port} )"], capture_output=True, text=True, check=True
        ).stdout
        holders = set(re.findall(r"pid=(\d+)", listening))
        if len(holders) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # One listening socket, held by both workers.
    assert len(listening.strip().splitlines()) == 1 and len(holders) == 2, listening
    ae = ApplicationEntity(ae_title="SPREAD")
    ae.add_requested_context(Verification)
    assocs = [ae.associate("127.0.0.1", port, ae_title=AE) for _ in range(4)]
    try:
        assert all(a.is_established for a in assocs)
        owners = _owners(port)
        assert sorted(collections.Counter(owners).values()) == [2, 2], owners
    finally:
        for a in assocs:
            a.release()
        ae.shutdown()


def test_silent_tls_peer_blocks_no_one(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A peer that connects to the TLS port and never says hello must not stop the next
    association (pynetdicom shakes hands in its accept loop, without a time limit)."""
    need_dcmtk("echoscu")
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
         "-out", "server.crt", "-days", "2", "-subj", "/CN=localhost"],
        cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server_factory(
        "dimse-tls-silent",
        "--set", f"dimse_tls_port={port}",
        "--set", f"dimse_tls_cert={tmp_path / 'server.crt'}",
        "--set", f"dimse_tls_key={tmp_path / 'server.key'}",
    )  # fmt: skip
    # One silent connection per worker process (the kernel spreads them over the workers).
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        time.sleep(0.5)
        start = time.monotonic()
        run(["echoscu", "+tla", "-ic", "-to", "10", "-aet", "TLSCLIENT", "-aec", AE,
             "127.0.0.1", str(port)])  # fmt: skip
        assert time.monotonic() - start < 5
    finally:
        for sock in silent:
            sock.close()
