"""DICOM TLS (PS3.15 B.12 Basic TLS Secure Transport, TLS 1.2/1.3 only) with dcmtk's echoscu
and openssl s_client against a server whose certificate and CA are made here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from integration import AUTH
from integration.cli import nubis_cli
from integration.dimse_helpers import AE, free_port, need_dcmtk, run


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, and a server and two client certificates it signs (openssl), in a
    folder of their own: one set for the module, since making RSA keys takes a while."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    folder = tmp_path_factory.mktemp("pki")
    make_pki(folder)
    return folder


def make_pki(folder: Path) -> None:
    """A throwaway CA, and a server and two client certificates it signs (openssl)."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=nubis test CA")  # fmt: skip
    for name in ("server", "client", "intruder"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2")  # fmt: skip


def test_tls_echo(server_factory, pki: Path) -> None:  # type: ignore[no-untyped-def]
    """echoscu over TLS with a client certificate succeeds (PS3.15 B.12); without one it is
    refused, since a CA is configured; TLS 1.1 is refused (only 1.2 and 1.3 are allowed)."""
    need_dcmtk("echoscu")
    port = free_port()
    server_factory(
        "dimse-tls",
        "--set", f"dimse_tls_port={port}",
        "--set", f"dimse_tls_cert={pki / 'server.crt'}",
        "--set", f"dimse_tls_key={pki / 'server.key'}",
        "--set", f"dimse_tls_ca={pki / 'ca.crt'}",
    )  # fmt: skip
    target = ["-aec", AE, "127.0.0.1", str(port)]
    run(["echoscu", "+tls", str(pki / "client.key"), str(pki / "client.crt"),
         "+cf", str(pki / "ca.crt"), "-aet", "TLSCLIENT", *target])  # fmt: skip
    anonymous = run(["echoscu", "+tla", "-ic", "-aet", "NOCERT", *target], check=False)
    assert anonymous.returncode != 0 or "Association Request Failed" in anonymous.stderr
    old = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Cipher is (NONE)" in old.stdout


def _fingerprint(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-fingerprint", "-sha256"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.strip().partition("=")[2]


def test_tls_client_certificate_identifies_the_peer(server_factory, pki: Path) -> None:  # type: ignore[no-untyped-def]
    """A peer entry binds its AE title to a client certificate (PS3.15 B.12: TLS peers
    authenticate with certificates; issue 4: peers are identified by AE title, host and
    certificate). With dimse_tls_ca set the handshake requires a certificate that CA signed;
    then the calling AE title must come with the certificate its entry names, by subject or
    SHA-256 fingerprint. Anything else is A-ASSOCIATE-RJ permanent, calling AE title not
    recognized (PS3.8 7.1.1.9 / 9.3.4), recorded as a Security Alert (Node Authentication,
    PS3.15 A.5.3.9); an entry bound to a certificate is refused on the plain port too."""
    need_dcmtk("echoscu")
    tls_port, plain_port = free_port(), free_port()
    server = server_factory(
        "dimse-tls-identity",
        "--dimse-port", str(plain_port),
        "--set", f"dimse_tls_port={tls_port}",
        "--set", f"dimse_tls_cert={pki / 'server.crt'}",
        "--set", f"dimse_tls_key={pki / 'server.key'}",
        "--set", f"dimse_tls_ca={pki / 'ca.crt'}",
        "--set", "dimse_unknown_callers=refuse",
    )  # fmt: skip
    data_dir = ["--data-dir", str(server.data_dir)]
    add = ("dimse", "peers", "add")
    nubis_cli(*add, "BYSUBJECT", "127.0.0.1", "--tls-subject", "CN=client", *data_dir, check=True)
    fingerprint = _fingerprint(pki / "client.crt")
    nubis_cli(*add, "BYPRINT", "127.0.0.1", "--tls-fingerprint", fingerprint, *data_dir, check=True)
    nubis_cli(*add, "ANYCERT", "127.0.0.1", *data_dir, check=True)

    def echo(
        calling: str, who: str | None, port: int = tls_port
    ) -> subprocess.CompletedProcess[str]:
        tls = ["+tls", str(pki / f"{who}.key"), str(pki / f"{who}.crt")] if who else []
        if port == tls_port:
            tls += ["+cf", str(pki / "ca.crt")] if who else ["+tla", "-ic"]
        args = ["echoscu", *tls, "-aet", calling, "-aec", AE, "127.0.0.1", str(port)]
        return run(args, check=False)

    for calling in ("BYSUBJECT", "BYPRINT", "ANYCERT"):
        assert echo(calling, "client").returncode == 0, calling
    assert echo("ANYCERT", "intruder").returncode == 0  # no binding: any certificate of the CA
    for calling in ("BYSUBJECT", "BYPRINT"):
        wrong = echo(calling, "intruder")
        assert wrong.returncode != 0
        assert "Calling AE Title Not Recognized" in wrong.stdout + wrong.stderr
        # No certificate: the handshake itself fails (dimse_tls_ca set).
        assert echo(calling, None).returncode != 0
        plain = echo(calling, None, plain_port)
        assert "Calling AE Title Not Recognized" in plain.stdout + plain.stderr
    # Security Alert (EventID 110113), Node Authentication (EventTypeCode 110126).
    query = {"event": "110113", "limit": 100}
    alerts = httpx.get(f"{server.url}/audit/records", params=query, headers=AUTH, timeout=30)
    text = str(alerts.json()["records"])
    assert "110126" in text and "intruder" in text and "BYSUBJECT" in text and "BYPRINT" in text
