"""Transport security of ``nubis serve``: TLS 1.2/1.3 only (probed with openssl s_client), no
unprotected non-loopback bind, and the first-start admin key printed once."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from integration import AUTH
from nubis.index.database import Index
from nubis.security.audit import AuditTrail


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _serve(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "nubis", "serve", "--data-dir", str(data_dir), *args]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def _stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        out, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return out


def _wait(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, _stop(process)
        try:
            if httpx.get(url + "/-/ready", verify=False, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(_stop(process))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(folder)
    port = _free_port()
    process = _serve(
        folder / "data",
        "--http-port", str(port),
        "--workers", "1",
        "--set", f"tls_cert={cert}",
        "--set", f"tls_key={key}",
        "--set", "durable=false",
    )  # fmt: skip
    _wait(f"https://127.0.0.1:{port}", process)
    try:
        yield port
    finally:
        _stop(process)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl s_client")
@pytest.mark.parametrize(
    ("version", "accepted"),
    [("-tls1", False), ("-tls1_1", False), ("-tls1_2", True), ("-tls1_3", True)],
)
def test_tls_versions(tls_server: int, version: str, accepted: bool) -> None:
    # SECLEVEL=0 lets the client itself offer TLS 1.0/1.1: the refusal must come from nubis.
    result = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{tls_server}", version,
            "-cipher", "DEFAULT:@SECLEVEL=0", "-brief",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    output = result.stdout + result.stderr
    if accepted:
        assert result.returncode == 0, output
        assert "Protocol version: TLSv1." in output, output
    else:
        assert result.returncode != 0, output
        assert "Protocol version" not in output, output


def test_https_serves_dicomweb_with_authentication(tls_server: int) -> None:
    url = f"https://127.0.0.1:{tls_server}/dicom-web/studies"
    assert httpx.get(url, verify=False).status_code == 401
    assert httpx.get(url, verify=False, headers=AUTH).status_code == 200
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls_server}/dicom-web/studies", headers=AUTH, timeout=5)


@pytest.mark.parametrize(
    ("extra", "missing"),
    [
        ((), "TLS (set tls_cert and tls_key) and authentication"),
        (("--set", "auth=false"), "TLS"),
    ],
)
def test_refuses_non_loopback_without_tls_and_auth(
    tmp_path: Path, extra: tuple[str, ...], missing: str
) -> None:
    process = _serve(tmp_path / "data", "--host", "0.0.0.0", "--set", "auth=false", *extra)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2, out
    assert "refusing to start" in out and "not a loopback address" in out, out
    assert missing in " ".join(out.split()), out


@pytest.mark.parametrize(
    ("switched_off", "why"),
    [
        ("auth=false", "authentication (auth=true)"),
        # HIPAA 164.312(b): the switch that measures the trail's cost never reaches a network.
        ("audit_trail=false", "the audit trail is off (audit_trail=false)"),
    ],
)
def test_refuses_non_loopback_with_tls_but_a_safeguard_off(
    tmp_path: Path, switched_off: str, why: str
) -> None:
    cert, key = _self_signed(tmp_path)
    process = _serve(
        tmp_path / "data",
        "--host", "0.0.0.0",
        "--set", f"tls_cert={cert}",
        "--set", f"tls_key={key}",
        "--set", switched_off,
    )  # fmt: skip
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2, out
    assert why in " ".join(out.split()), out
    assert not (tmp_path / "data" / "index.sqlite").exists()


def test_serve_records_application_start_and_stop(tmp_path: Path) -> None:
    """PS3.15 A.5.3.1 Application Activity: one Start and one Stop per server, not per worker."""
    port = _free_port()
    data = tmp_path / "data"
    process = _serve(data, "--http-port", str(port), "--workers", "2", "--set", "durable=false")
    _wait(f"http://127.0.0.1:{port}", process)
    _stop(process)
    index = Index(f"sqlite:///{data / 'index.sqlite'}")
    index.open()
    try:
        trail = AuditTrail(index, key_path=data / "audit-signing.key", source_id="NUBIS")
        kinds = [
            [t["display"] for t in r.event_dict.get("event_types", [])]
            for r in trail.scan()
            if r.event_dict["event_id"]["code"] == "110100"
        ]
        assert kinds == [["Application Start"], ["Application Stop"]]
        assert trail.verify().ok
    finally:
        index.close()


def test_first_start_prints_an_admin_key_once(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "NUBIS_ADMIN_TOKEN"}
    args = ("--http-port", str(port), "--workers", "1", "--set", "durable=false")

    def run() -> tuple[subprocess.Popen[str], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "nubis", "serve", "--data-dir", str(tmp_path / "d"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )
        _wait(f"http://127.0.0.1:{port}", process)
        return process, f"http://127.0.0.1:{port}"

    process, url = run()
    out = _stop(process)
    keys = [word for word in out.split() if word.startswith("nbk_")]
    assert keys, out
    key = keys[0]
    assert "No users yet" in out
    # The key works, and only its hash is on disk.
    process, url = run()
    try:
        who = httpx.get(f"{url}/-/whoami", headers={"Authorization": f"Bearer {key}"})
        assert who.json()["roles"] == ["admin"], who.text
    finally:
        again = _stop(process)
    assert "nbk_" not in again  # printed once, on the first start only
    for path in (tmp_path / "d").rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
