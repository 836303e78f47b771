"""Helpers for the DIMSE tests: a live server with a DICOM port, and dcmtk runners."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

AE = "NUBIS"
DCMTK_TIMEOUT = 60


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, timeout: float = 10) -> None:
    """Until a process just started (a storescp) listens on ``port``: read from the kernel's
    socket tables, so nothing connects to it, and no fixed sleep is spent on every start."""
    wanted = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as f:
                for line in f.readlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    if local.endswith(wanted) and state == "0A":  # 0A: LISTEN
                        return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def need_dcmtk(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"dcmtk tools missing: {missing} (scripts/test.sh installs dcmtk)")


@dataclass
class Dimse:
    """A live ``nubis serve`` with DIMSE on ``port``; ``http`` is its DICOMweb root."""

    server: object
    port: int

    @property
    def http(self) -> str:
        return self.server.dicomweb  # type: ignore[attr-defined]

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir  # type: ignore[attr-defined]

    def log(self) -> str:
        return self.server.log()  # type: ignore[attr-defined]


def run(
    args: list[str], *, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=DCMTK_TIMEOUT, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def findscu(
    port: int, level: str, keys: list[str], out_dir: Path, *, model: str = "-S"
) -> list[Dataset]:
    """Run findscu, extracting each response to a file; return the response identifiers."""
    out_dir.mkdir(parents=True, exist_ok=True)
    args = ["findscu", model, "-aet", "TEST", "-aec", AE, "-X", "-od", str(out_dir)]
    args += ["127.0.0.1", str(port), "-k", f"QueryRetrieveLevel={level}"]
    for key in keys:
        args += ["-k", key]
    run(args)
    return [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def dataset_bytes(data: bytes) -> bytes:
    """The data set of a PS3.10 file without preamble and file meta (which senders rebuild)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return data[meta_end:]


def data_set_offset(head: bytes) -> int:
    """Where the data set starts in a PS3.10 file: after the preamble, "DICM" and the file
    meta group, whose length is the value of its first element (PS3.10 7.1)."""
    assert head[128:132] == b"DICM", head[:140]
    return 144 + int.from_bytes(head[140:144], "little")


def file_data_set_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 and size of the data set of the PS3.10 file at ``path``, read a MB at a time."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        f.seek(data_set_offset(f.read(144)))
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def sent_by_dcmtk(data: bytes) -> bytes:
    """The data set bytes dcmtk sends for a file: as in the file, less the Data Set Trailing
    Padding (FFFC,FFFC), which dcmtk drops (PS3.10 7.2 lets it be removed)."""
    body = dataset_bytes(data)
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if 0xFFFCFFFC not in ds:
        return body
    at = body.rfind(b"\xfc\xff\xfc\xff")
    return body[:at] if at >= 0 else body
