"""DICOM TLS (PS3.15 B.12 Basic TLS Secure Transport, TLS 1.2/1.3 only) with dcmtk's echoscu
and openssl s_client against a server whose certificate and CA are made here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from integration.dimse_helpers import AE, free_port, need_dcmtk, run


def make_pki(folder: Path) -> None:
    """A throwaway CA, and a server and a client certificate it signs (openssl)."""

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=nubis test CA")  # fmt: skip
    for name in ("server", "client"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2")  # fmt: skip


def test_tls_echo(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """echoscu over TLS with a client certificate succeeds (PS3.15 B.12); without one it is
    refused, since a CA is configured; TLS 1.1 is refused (only 1.2 and 1.3 are allowed)."""
    need_dcmtk("echoscu")
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates")
    make_pki(tmp_path)
    port = free_port()
    server_factory(
        "dimse-tls",
        "--set", f"dimse_tls_port={port}",
        "--set", f"dimse_tls_cert={tmp_path / 'server.crt'}",
        "--set", f"dimse_tls_key={tmp_path / 'server.key'}",
        "--set", f"dimse_tls_ca={tmp_path / 'ca.crt'}",
    )  # fmt: skip
    target = ["-aec", AE, "127.0.0.1", str(port)]
    run(["echoscu", "+tls", str(tmp_path / "client.key"), str(tmp_path / "client.crt"),
         "+cf", str(tmp_path / "ca.crt"), "-aet", "TLSCLIENT", *target])  # fmt: skip
    anonymous = run(["echoscu", "+tla", "-ic", "-aet", "NOCERT", *target], check=False)
    assert anonymous.returncode != 0 or "Association Request Failed" in anonymous.stderr
    old = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_1"],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert "Cipher is (NONE)" in old.stdout
