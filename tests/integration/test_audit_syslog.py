"""Audit forwarding to a real syslog-over-TLS collector (RFC 5425) started by the test.

The collector is a Python ssl server with a self-signed certificate made with ``cryptography``;
it parses RFC 5425 octet-counted frames and RFC 5424 headers, and the DICOM audit messages in
them. Covers delivery, a collector that is down (nothing lost, delivered once it is up) and the
forwarding of signed checkpoints.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from nubis.index.database import Index
from nubis.security import audit_events
from nubis.security.audit import AuditTrail
from nubis.security.audit_export import CHECKPOINT_MSGID, MSGID, SyslogForwarder


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "collector.pem", folder / "collector.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Collector:
    """A TLS syslog collector: accepts connections, splits RFC 5425 frames, keeps messages."""

    def __init__(self, cert: Path, key: Path, port: int) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.port = port
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                raw, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._client, args=(raw,), daemon=True).start()

    def _client(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        buffer = b""
        conn.settimeout(0.2)
        with conn:
            while self.running:
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except (ssl.SSLError, OSError):
                    return
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:
                    length, _, rest = buffer.partition(b" ")
                    if len(rest) < int(length):
                        break
                    with self.lock:
                        self.messages.append(rest[: int(length)])
                    buffer = rest[int(length) :]

    def stop(self) -> None:
        self.running = False
        self.server.close()
        self.thread.join(timeout=5)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        with self.lock:
            return list(self.messages)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[AuditTrail]:
    idx = Index(f"sqlite:///{tmp_path / 'index.sqlite'}", durable=False)
    idx.migrate()
    idx.open()
    t = AuditTrail(
        idx,
        key_path=tmp_path / "audit.key",
        source_id="NUBIS",
        checkpoint_every=4,
        checkpoint_seconds=0,
    )
    t.open()
    yield t
    idx.close()


@pytest.fixture
def certs(tmp_path: Path) -> tuple[Path, Path]:
    return _self_signed(tmp_path)


def _record(trail: AuditTrail, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        trail.record(
            audit_events.instances_accessed(
                "dr-x", patient_id=f"P{i}", study_uids=[f"1.2.{i}"], front_door="dicomweb"
            )
        )


def _audit_messages(messages: list[bytes]) -> list[ET.Element]:
    out = []
    for m in messages:
        header, _, body = m.partition(b"\xef\xbb\xbf")
        assert header.startswith((b"<85>1 ", b"<84>1 ")), header
        if f" {MSGID} ".encode() in header:
            out.append(ET.fromstring(body))
    return out


def test_delivers_dicom_audit_messages_over_tls(
    trail: AuditTrail, certs: tuple[Path, Path]
) -> None:
    port = _free_port()
    collector = Collector(*certs, port)
    try:
        _record(trail, 5)
        forwarder = SyslogForwarder(trail, f"tls://localhost:{port}", ca_file=str(certs[0]))
        assert forwarder.drain() == 5
        messages = collector.wait_for(6)  # 5 records + the checkpoint at record 4
        forwarder.close_connection()
    finally:
        collector.stop()
    audits = _audit_messages(messages)
    ids = [a.find("ParticipantObjectIdentification").attrib["ParticipantObjectID"] for a in audits]  # type: ignore[union-attr]
    assert ids == [f"P{i}" for i in range(5)]
    assert any(f" {CHECKPOINT_MSGID} ".encode() in m for m in messages)
    assert trail.cursor(SyslogForwarder.cursor_name) == 5


def test_untrusted_collector_is_refused(trail: AuditTrail, certs: tuple[Path, Path]) -> None:
    port = _free_port()
    collector = Collector(*certs, port)
    try:
        _record(trail, 1)
        # No CA file: the self-signed certificate is not in the system store.
        forwarder = SyslogForwarder(trail, f"tls://localhost:{port}")
        with pytest.raises(ssl.SSLError):
            forwarder.drain()
    finally:
        collector.stop()
    assert trail.cursor(SyslogForwarder.cursor_name) == 0


def test_nothing_lost_while_the_collector_is_down(
    trail: AuditTrail, certs: tuple[Path, Path]
) -> None:
    port = _free_port()
    forwarder = SyslogForwarder(trail, f"tls://localhost:{port}", ca_file=str(certs[0]))
    _record(trail, 3)
    with pytest.raises(OSError):
        forwarder.drain()  # nobody listening
    assert trail.cursor(SyslogForwarder.cursor_name) == 0

    # The background forwarder keeps retrying; records keep arriving meanwhile.
    forwarder.start(interval=0.1, max_backoff=0.4)
    try:
        _record(trail, 3, start=3)
        time.sleep(0.5)
        collector = Collector(*certs, port)
        try:
            _record(trail, 2, start=6)
            messages = collector.wait_for(8 + 2)  # 8 records, checkpoints at 4 and 8
            deadline = time.monotonic() + 10
            while trail.cursor(SyslogForwarder.cursor_name) < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            forwarder.stop()
            collector.stop()
    finally:
        forwarder.stop()
    ids = [
        a.find("ParticipantObjectIdentification").attrib["ParticipantObjectID"]  # type: ignore[union-attr]
        for a in _audit_messages(messages)
    ]
    assert ids == [f"P{i}" for i in range(8)]
    assert trail.cursor(SyslogForwarder.cursor_name) == 8


def test_collector_restart_resends_from_the_cursor(
    trail: AuditTrail, certs: tuple[Path, Path]
) -> None:
    port = _free_port()
    collector = Collector(*certs, port)
    forwarder = SyslogForwarder(trail, f"tls://localhost:{port}", ca_file=str(certs[0]))
    try:
        _record(trail, 2)
        assert forwarder.drain() == 2
        collector.wait_for(2)
    finally:
        collector.stop()
    time.sleep(0.3)  # the collector's connection threads see it stop and close
    _record(trail, 2, start=2)
    second = Collector(*certs, port)
    try:
        # The old connection was closed by the collector: detected, reconnected, delivered.
        assert forwarder.drain() == 2
        audits = _audit_messages(second.wait_for(3))
    finally:
        forwarder.close_connection()
        second.stop()
    ids = [a.find("ParticipantObjectIdentification").attrib["ParticipantObjectID"] for a in audits]  # type: ignore[union-attr]
    assert ids == ["P2", "P3"]
