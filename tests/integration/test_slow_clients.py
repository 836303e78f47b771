"""Requests whose headers or body stop arriving are cut (issue 9 item 7; web/slow_clients.py).

With raw sockets against a live server whose header and body timeouts are 2 s: a connection
that sends half a request head, or nothing, is closed (408 Request Timeout, RFC 9110 15.5.9,
when part of a request came); a thousand of them at once do not keep a normal request from
being served, and all are closed; a STOW-RS body that stalls half-way is cut with nothing of
its unfinished part stored; a request answered before its body came (401) waits for the rest
of the body for no longer than the body timeout.
"""

from __future__ import annotations

import resource
import select
import selectors
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from integration import AUTH
from integration.server import Server, spool_files, start_server
from nubis.tools import synth

TIMEOUT = 2
SLACK = 4  # the server checks on its event loop; the machine is shared
CONNECTIONS = 1000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "NUBIS_DURABLE": "false",
        "NUBIS_WORKERS": "2",
        "NUBIS_HTTP_HEADER_TIMEOUT_SECONDS": str(TIMEOUT),
        "NUBIS_HTTP_BODY_TIMEOUT_SECONDS": str(TIMEOUT),
    }
    server = start_server(tmp_path_factory.mktemp("slow") / "data", env=env)
    try:
        yield server
    finally:
        server.stop()


def connect(server: Server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took; fails after
    ``limit`` seconds of waiting."""
    started = time.monotonic()
    sock.settimeout(limit)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {limit} s; got {received[:200]!r}")
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def test_a_silent_connection_is_closed(server: Server) -> None:
    with connect(server) as sock:
        received, waited = read_until_closed(sock, TIMEOUT + SLACK)
    assert received == b"" and waited >= TIMEOUT - 0.5


@pytest.mark.parametrize(
    "head",
    [b"GET /-/health HTTP/1.1\r\nHost: nubis\r\n", b"GET /dicom-web/stu", b"G"],
)
def test_a_request_head_that_stops_is_answered_408_and_closed(server: Server, head: bytes) -> None:
    with connect(server, head) as sock:
        received, waited = read_until_closed(sock, TIMEOUT + SLACK)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert waited >= TIMEOUT - 0.5


def test_a_head_trickled_byte_by_byte_is_cut_at_the_deadline(server: Server) -> None:
    request = b"GET /-/health HTTP/1.1\r\nHost: nubis\r\nX-Slow: " + b"a" * 200
    started = time.monotonic()
    with connect(server) as sock:
        for byte in request:
            # The server has answered (408) or closed: stop trickling.
            if select.select([sock], [], [], 0.1)[0]:
                break
            assert time.monotonic() - started < TIMEOUT + SLACK, "still read past its deadline"
            sock.sendall(bytes([byte]))
        received, _ = read_until_closed(sock, SLACK)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert time.monotonic() - started < TIMEOUT + SLACK


def test_a_thousand_slow_connections_do_not_stop_normal_requests(server: Server) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < CONNECTIONS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, CONNECTIONS + 500), hard))
    head = b"POST /dicom-web/studies HTTP/1.1\r\nHost: n"
    socks = [connect(server, head) for _ in range(CONNECTIONS)]
    opened = time.monotonic()
    try:
        # Normal requests are served at once, while all of them hang.
        for _ in range(5):
            started = time.perf_counter()
            response = httpx.get(f"{server.dicomweb}/studies", headers=AUTH, timeout=10)
            assert response.status_code == 200, response.text
            assert time.perf_counter() - started < 2.0
        # Then the server closes every one of them.
        selector = selectors.DefaultSelector()
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ones = set(socks)
        while open_ones and time.monotonic() - opened < TIMEOUT + SLACK + 10:
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if not chunk:
                    selector.unregister(sock)
                    open_ones.discard(sock)
        assert not open_ones, f"{len(open_ones)} of {CONNECTIONS} slow connections still open"
    finally:
        for sock in socks:
            sock.close()


def _objects(folder: Path) -> list[Path]:
    return [
        synth.make_multiframe(folder / f"{i}.dcm", frames=1, rows=64, columns=64, seed=80 + i)
        for i in range(2)
    ]


def test_a_stow_body_that_stalls_is_cut_and_its_unfinished_part_not_stored(
    server: Server, tmp_path: Path
) -> None:
    first, second = _objects(tmp_path)
    part = b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    body = part + first.read_bytes() + b"\r\n" + part + second.read_bytes() + b"\r\n--b--\r\n"
    cut = len(part + first.read_bytes() + b"\r\n" + part) + second.stat().st_size // 2
    head = (
        "POST /dicom-web/studies HTTP/1.1\r\nHost: nubis\r\n"
        f"Authorization: {AUTH['Authorization']}\r\n"
        'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with connect(server, head + body[:cut]) as sock:
        received, waited = read_until_closed(sock, TIMEOUT + SLACK)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert waited >= TIMEOUT - 0.5
    unfinished = str(pydicom.dcmread(second, stop_before_pixels=True).SOPInstanceUID)
    found = httpx.get(
        f"{server.dicomweb}/instances", params={"SOPInstanceUID": unfinished}, headers=AUTH
    )
    assert found.status_code == 200 and found.json() == [], found.text
    deadline = time.monotonic() + SLACK
    while spool_files(server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool_files(server.data_dir) == []


def test_a_body_answered_before_it_came_does_not_hold_the_connection(server: Server) -> None:
    head = (
        b"POST /dicom-web/studies HTTP/1.1\r\nHost: nubis\r\n"
        b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        b"Content-Length: 100000000\r\n\r\n--b\r\n"
    )
    with connect(server, head) as sock:
        received, waited = read_until_closed(sock, TIMEOUT + SLACK)
    assert received.startswith(b"HTTP/1.1 401 "), received
    assert waited < TIMEOUT + SLACK
