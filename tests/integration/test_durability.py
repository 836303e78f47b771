"""Crash safety of ingest: SIGKILL the server while STOW-RS requests are in flight.

The promise under test: an acknowledged instance is never lost, no index row ever points at a
missing or different blob, and what a crash leaves behind (orphan blobs, spool files) is
cleaned up on the next start. Clients record exactly what the server acknowledged, the server
is killed at a random moment, restarted on the same folder, and every acknowledged instance is
fetched back and compared byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pydicom

from integration import AUTH
from integration.server import (
    ACCEPT_AS_STORED,
    Server,
    blob_files,
    blob_path,
    doomed_keys,
    index_rows,
    is_blob_name,
    multipart_content_type,
    parse_multipart,
    read_blob,
    spool_files,
    start_server,
)
from nubis.tools.synth import make_ct_series, make_large_instance
from nubis.web.dicomweb.multipart import iter_multipart, new_boundary

CLIENTS = 4
BATCH = 5
KILL_CYCLES = 3
# Every orphan is reaped at start, however young: nothing else writes to the folder then.
SERVER_ENV = {"NUBIS_ORPHAN_GRACE_SECONDS": "0"}
_UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class Template:
    data: bytes
    sop_uid: str
    study_uid: str
    series_uid: str


@dataclass(frozen=True)
class Sent:
    """One instance put on the wire: enough to rebuild its exact bytes."""

    template: Template
    sop_uid: str

    def data(self) -> bytes:
        # Same length as the template's UID, so the file meta group length stays right.
        return self.template.data.replace(self.template.sop_uid.encode(), self.sop_uid.encode())

    def url(self, server: Server) -> str:
        t = self.template
        return (
            f"{server.dicomweb}/studies/{t.study_uid}/series/{t.series_uid}"
            f"/instances/{self.sop_uid}"
        )


class UidMaker:
    """Unique SOP Instance UIDs of the templates' lengths (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._run = secrets.randbelow(10**8)

    def like(self, uid: str) -> str:
        with self._lock:
            self._next += 1
            n = self._next
        width = len(uid) - len(_UID_ROOT)
        digits = f"9{self._run:08d}{n:0{width - 9}d}"
        assert len(digits) == width, (uid, digits)
        return _UID_ROOT + digits


@dataclass
class Ledger:
    """What the clients sent and what the server acknowledged, across every kill cycle."""

    sent: dict[str, Sent] = field(default_factory=dict)
    acknowledged: dict[str, Sent] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    interrupted: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _templates(folder: Path, seed: int) -> list[Template]:
    # ~100 KB each: 224 x 224 x 16-bit pixels plus the header.
    paths = make_ct_series(folder, n_instances=BATCH, rows=224, columns=224, seed=seed)
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        data = path.read_bytes()
        assert data.count(str(ds.SOPInstanceUID).encode()) == 2  # file meta and data set
        out.append(
            Template(data, str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), ds.SeriesInstanceUID)
        )
    return out


def _acknowledged_uids(response: httpx.Response) -> list[str]:
    body = json.loads(response.content)
    items = body.get("00081199", {}).get("Value", [])
    return [item["00081155"]["Value"][0] for item in items]


def _client(
    server: Server,
    templates: list[Template],
    uids: UidMaker,
    ledger: Ledger,
    stop: threading.Event,
) -> None:
    """POST batches until the server dies under us (or ``stop`` is set)."""
    with httpx.Client(timeout=30, headers=AUTH) as client:
        while not stop.is_set():
            batch = [Sent(t, uids.like(t.sop_uid)) for t in templates]
            with ledger.lock:
                ledger.sent.update((s.sop_uid, s) for s in batch)
            boundary = new_boundary()
            body = iter_multipart(
                (({"Content-Type": "application/dicom"}, [s.data()]) for s in batch), boundary
            )
            try:
                response = client.post(
                    f"{server.dicomweb}/studies",
                    content=body,
                    headers={
                        "Content-Type": multipart_content_type(boundary),
                        "Accept": "application/dicom+json",
                    },
                )
            except httpx.TransportError:
                # The kill landed during this request: nothing of it was acknowledged.
                with ledger.lock:
                    ledger.interrupted += 1
                return
            with ledger.lock:
                if response.status_code in (200, 202):
                    for uid in _acknowledged_uids(response):
                        ledger.acknowledged[uid] = next(s for s in batch if s.sop_uid == uid)
                if response.status_code != 200:
                    ledger.unexpected.append(f"{response.status_code}: {response.text[:300]}")


def _fetch(client: httpx.Client, url: str) -> bytes:
    response = client.get(url, headers={"Accept": ACCEPT_AS_STORED})
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    parts = parse_multipart(response.content, response.headers["content-type"])
    assert len(parts) == 1, url
    return parts[0]


def _check_archive(server: Server, ledger: Ledger) -> dict[str, int]:
    """The four promises, checked on a freshly restarted server."""
    data_dir = server.data_dir
    rows = index_rows(data_dir)

    # (a) Every acknowledged instance is retrievable and byte-identical to what was sent.
    acknowledged = list(ledger.acknowledged.values())
    with httpx.Client(timeout=30, headers=AUTH) as client, ThreadPoolExecutor(4) as pool:
        fetched = list(pool.map(lambda s: _fetch(client, s.url(server)), acknowledged))
    for sent, got in zip(acknowledged, fetched, strict=True):
        assert got == sent.data(), f"acknowledged {sent.sop_uid} came back different"

    # (b) Every index row has its blob, with the recorded size and SHA-256, and holds exactly
    # what a client sent (acknowledged or not: an unacknowledged store may have completed).
    for row in rows:
        path = blob_path(data_dir, row.blob_key)
        assert path.is_file(), f"index row {row.sop_instance_uid} has no blob {row.blob_key}"
        data = read_blob(data_dir, row)
        assert len(data) == row.size, f"blob {row.blob_key}: {len(data)} bytes, row {row.size}"
        assert hashlib.sha256(data).hexdigest() == row.sha256, f"blob {row.blob_key} digest"
        sent = ledger.sent.get(row.sop_instance_uid)
        assert sent is not None, f"index row {row.sop_instance_uid} that no client sent"
        assert data == sent.data(), f"{row.sop_instance_uid} stored differs from what was sent"
    assert len({r.sop_instance_uid for r in rows}) == len(rows)
    assert set(ledger.acknowledged) <= {r.sop_instance_uid for r in rows}

    # (c) No blob without an index row: the start-up reaper removed every orphan.
    referenced = {r.blob_key for r in rows} | doomed_keys(data_dir)
    for path in blob_files(data_dir):
        assert is_blob_name(path.name), f"stray file in the blob store: {path}"
        assert path.name in referenced, f"orphan blob {path.name} survived the restart"

    # (d) Nothing is left in the spool.
    assert spool_files(data_dir) == []
    return {"rows": len(rows), "acknowledged": len(acknowledged)}


def _plant_leftovers(data_dir: Path) -> Path:
    """A fake orphan blob and spool file, so the clean-up checks never pass vacuously."""
    key = secrets.token_hex(16)
    orphan = blob_path(data_dir, key)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan of a store that never committed")
    (data_dir / "spool").mkdir(exist_ok=True)
    (data_dir / "spool" / f"in-{secrets.token_hex(12)}").write_bytes(b"half a request")
    return orphan


def test_sigkill_during_concurrent_stow_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    templates = [_templates(tmp_path / f"tpl{i}", seed=100 + i) for i in range(CLIENTS)]
    uids = UidMaker()
    ledger = Ledger()
    rng = random.Random()
    # One delay from each third of 0.5-2 s, in random order, so the kills land at different
    # points of ingest (spooling, inspecting, fsync, index commit, response).
    delays = [rng.uniform(0.5 + 0.5 * i, 1.0 + 0.5 * i) for i in range(KILL_CYCLES)]
    rng.shuffle(delays)

    server = start_server(data_dir, env=SERVER_ENV)
    try:
        for cycle, delay in enumerate(delays):
            acknowledged_before = len(ledger.acknowledged)
            interrupted_before = ledger.interrupted
            stop = threading.Event()
            threads = [
                threading.Thread(target=_client, args=(server, t, uids, ledger, stop))
                for t in templates
            ]
            for thread in threads:
                thread.start()
            time.sleep(delay)
            server.kill()
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
                assert not thread.is_alive()
            orphan = _plant_leftovers(data_dir)

            server = start_server(data_dir, env=SERVER_ENV)
            counts = _check_archive(server, ledger)
            assert not orphan.exists()
            new_acks = len(ledger.acknowledged) - acknowledged_before
            print(
                f"cycle {cycle}: killed after {delay:.2f}s, {new_acks} newly acknowledged, "
                f"{ledger.interrupted - interrupted_before} request(s) cut, "
                f"{counts['rows']} rows in the index"
            )
            assert new_acks > 0, "the server acknowledged nothing before the kill"
            assert ledger.interrupted > interrupted_before, "the kill cut no request"
        assert ledger.unexpected == []
    finally:
        server.kill()


# ---------------------------------------------------------------------- half-sent request


def _half_sent_request(server: Server, tmp_path: Path) -> tuple[socket.socket, Path, str]:
    """Open a STOW-RS request for a ~48 MB instance and send only half of its body."""
    path = make_large_instance(tmp_path / "large.dcm", size_bytes=48 << 20, seed=7)
    sop_uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
    data = path.read_bytes()
    boundary = new_boundary()
    body = b"".join(iter_multipart([({"Content-Type": "application/dicom"}, [data])], boundary))
    head = (
        f"POST /dicom-web/studies HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: {multipart_content_type(boundary)}\r\n"
        f"Accept: application/dicom+json\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head + body[: len(body) // 2])
    _wait_for_spooling(server.data_dir, at_least=len(body) // 4)
    return sock, path, sop_uid


def _wait_for_spooling(data_dir: Path, *, at_least: int) -> None:
    """Wait until the server has written part of the body to a spool file."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in spool_files(data_dir) if p.exists()]
        if sizes and max(sizes) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError("the server never started spooling the half-sent request")


def _assert_nothing_stored(server: Server, sop_uid: str) -> None:
    assert index_rows(server.data_dir) == []
    assert list(blob_files(server.data_dir)) == []
    assert spool_files(server.data_dir) == []
    found = httpx.get(
        f"{server.dicomweb}/instances", params={"SOPInstanceUID": sop_uid}, headers=AUTH
    )
    assert found.status_code in (200, 204)
    assert found.status_code == 204 or json.loads(found.content or b"[]") == []


def test_sigkill_with_half_sent_large_request_leaves_nothing(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", env=SERVER_ENV)
    try:
        sock, _, sop_uid = _half_sent_request(server, tmp_path)
        with sock:
            server.kill()
            # The client sees the connection die, never a response: nothing was acknowledged.
            sock.settimeout(10)
            try:
                reply = sock.recv(65536)
            except ConnectionResetError:
                reply = b""
            assert reply == b"", reply[:300]
        server = start_server(server.data_dir, env=SERVER_ENV)
        _assert_nothing_stored(server, sop_uid)
    finally:
        server.kill()


def test_client_vanishing_mid_body_leaves_nothing(tmp_path: Path) -> None:
    """Without a crash the server itself must drop a request whose client went away."""
    server = start_server(tmp_path / "data", env=SERVER_ENV)
    try:
        sock, _, sop_uid = _half_sent_request(server, tmp_path)
        sock.close()
        deadline = time.monotonic() + 10
        while spool_files(server.data_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        _assert_nothing_stored(server, sop_uid)
        assert httpx.get(f"{server.url}/-/ready", headers=AUTH).status_code == 200
        # A client giving up is routine, not an internal error for an operator to chase.
        assert "Traceback" not in server.log()
    finally:
        server.kill()
