"""A ``nubis serve`` subprocess that tests can SIGKILL, restart and inspect on disk.

The durability and large-instance tests need things the shared live-server fixture does not
give: the real fsync path (durable=true), a process group to kill mid-request, restarts on the
same data folder, the server's peak RSS, and read-only views of its index and blob folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.blobs.filesystem import FileBlobStore
from nubis.crypto.envelope import MAGIC
from nubis.crypto.local_keys import LocalKeyring
from nubis.ports.blobs import BlobContext

_READY_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0
_BLOB_NAME = re.compile(r"[0-9a-f]{32}")

DICOM_PART = "application/dicom"
ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    data_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook, no flush, no cleanup runs."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=_STOP_TIMEOUT)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def _pids(self) -> list[int]:
        """The server process and its worker processes (requests run in the workers, when
        there are)."""
        pids = [self.pid]
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
            pids += [int(p) for p in children.split()]
        return pids

    def peak_rss_bytes(self) -> int:
        """The largest VmHWM of the server and its worker processes: the most resident memory
        any of them has had since it started, or since :meth:`reset_peak_rss`."""
        pids = self._pids()
        peak = 0
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        value, unit = line.split()[1:3]
                        assert unit == "kB", line
                        peak = max(peak, int(value) * 1024)
        assert peak, f"no VmHWM for {pids}"
        return peak

    def reset_peak_rss(self) -> None:
        """Bring each process's VmHWM down to its present resident memory (Linux clear_refs
        "5"), so that :meth:`peak_rss_bytes` measures what comes next on its own."""
        for pid in self._pids():
            with contextlib.suppress(FileNotFoundError):  # a worker that has just exited
                Path(f"/proc/{pid}/clear_refs").write_text("5")


def start_server(
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    log_level: str = "info",
    port: int | None = None,
) -> Server:
    """Start ``python -m nubis serve`` in its own process group; return once /-/ready is 200.
    ``port``: this one (a server restarted where others reach it), else a free one."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}-server.log"
    extra = dict(env or {})
    server: Server | None = None
    # A port picked now may be taken before the server binds it; try another one then.
    for _ in range(1 if port is not None else 3):
        chosen = port if port is not None else _free_port()
        args = [
            sys.executable, "-m", "nubis", "serve",
            "--data-dir", str(data_dir),
            "--http-port", str(chosen),
            "--set", f"log_level={log_level}",
        ]  # fmt: skip
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **extra},
                start_new_session=True,
            )
        server = Server(data_dir, chosen, process, log_path, extra)
        if _wait_ready(server):
            return server
        server.kill()
        if "address already in use" not in server.log().lower():
            break
    log = server.log() if server else ""
    raise RuntimeError(f"nubis serve did not become ready; its log:\n{log}")


def _wait_ready(server: Server) -> bool:
    deadline = time.monotonic() + _READY_TIMEOUT
    # One client for every poll: each top-level httpx.get builds an SSL context (the CA
    # bundle parsed again), 0.05-0.3 s of CPU taken from the server that is starting.
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            try:
                if client.get(f"{server.url}/-/ready").status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            time.sleep(0.05)
    return False


# ---------------------------------------------------------------------- on-disk views


@dataclass(frozen=True)
class IndexRow:
    sop_instance_uid: str
    blob_key: str
    size: int
    sha256: str
    partition: str = ""
    study_uid: str = ""
    series_uid: str = ""

    @property
    def context(self) -> BlobContext:
        return BlobContext(
            self.partition, self.study_uid, self.series_uid, self.sop_instance_uid, self.sha256
        )


def wait_rekeyed(data_dir: Path, timeout: float = 30) -> None:
    """Wait until the server's runner has re-keyed every corrected study (its blobs are
    replaced meanwhile: an index row read before a swap may name a blob deleted after it)."""
    uri = f"file:{(data_dir / 'index.sqlite').resolve()}?mode=ro"
    deadline = time.monotonic() + timeout
    while True:
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            if not conn.execute("SELECT count(*) FROM study_rekeys").fetchone()[0]:
                return
        assert time.monotonic() < deadline, "the rekey job did not finish"
        time.sleep(0.1)


def index_rows(data_dir: Path) -> list[IndexRow]:
    """Every instance row, read through a read-only connection (the server may be running)."""
    uri = f"file:{(data_dir / 'index.sqlite').resolve()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        query = (
            "SELECT i.sop_instance_uid, i.blob_key, i.size, i.sha256, i.partition, "
            "st.study_uid, se.series_uid FROM instances i "
            "JOIN series se ON se.id = i.series_pk JOIN studies st ON st.id = se.study_pk"
        )
        return [IndexRow(*row) for row in conn.execute(query)]


def read_blob(data_dir: Path, row: IndexRow) -> bytes:
    """The object a blob holds: its plaintext, decrypted with the archive's keyring if the
    archive encrypts (the default), else the file's bytes."""
    path = blob_path(data_dir, row.blob_key)
    if path.read_bytes()[:8] != MAGIC:
        return path.read_bytes()
    keys = LocalKeyring(data_dir / "keyring.jsonl", create=False)
    store = EncryptedBlobStore(FileBlobStore(data_dir / "blobs"), keys)
    return store.read(row.blob_key, context=row.context)


def doomed_keys(data_dir: Path) -> set[str]:
    uri = f"file:{(data_dir / 'index.sqlite').resolve()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        return {row[0] for row in conn.execute("SELECT blob_key FROM doomed_blobs")}


def blob_path(data_dir: Path, key: str) -> Path:
    return data_dir / "blobs" / key[:2] / key[2:4] / key


def blob_files(data_dir: Path) -> Iterator[Path]:
    """Every regular file under blobs/, including any that is not a well-formed blob."""
    for path in (data_dir / "blobs").rglob("*"):
        if path.is_file():
            yield path


def is_blob_name(name: str) -> bool:
    return _BLOB_NAME.fullmatch(name) is not None


def spool_files(data_dir: Path) -> list[Path]:
    spool = data_dir / "spool"
    return sorted(p for p in spool.iterdir()) if spool.exists() else []


# ---------------------------------------------------------------------- multipart bodies


def multipart_content_type(boundary: str) -> str:
    return f'multipart/related; type="{DICOM_PART}"; boundary="{boundary}"'


def parse_multipart(body: bytes, content_type: str) -> list[bytes]:
    """Part bodies of a multipart/related response held in memory (small responses only)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    dash = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(dash)[1:]:
        if chunk.startswith(b"--"):
            break
        headers_end = chunk.index(b"\r\n\r\n")
        parts.append(chunk[headers_end + 4 : -2])  # the CRLF before the next delimiter
    return parts
