"""Debian's Orthanc as a legacy PACS for the migration tests: a child process on loopback.

Its own storage and JSON configuration in a temporary folder, free 127.0.0.1 ports, DIMSE and
DICOMweb (the orthanc-dicomweb plugin); installed by scripts/test.sh. ``extra`` settings are
merged into the configuration (e.g. ``LimitFindResults``, ``DicomModalities``).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

_READY_SECONDS = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dicomweb_plugin() -> str:
    listing = subprocess.run(
        ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
    ).stdout
    for line in sorted(listing.splitlines(), key=len):
        if "OrthancDicomWeb" in line and ".so" in line and Path(line).exists():
            return line
    raise RuntimeError("the orthanc-dicomweb package has no libOrthancDicomWeb.so")


class Orthanc:
    """A private Orthanc; ``stop()`` ends it and removes its storage."""

    AE_TITLE = "LEGACY"

    def __init__(self, **extra: Any) -> None:
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="nubis-orthanc-"))
        storage = self.workdir / "storage"
        self.config: dict[str, Any] = {
            "Name": "legacy-pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.AE_TITLE,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [_dicomweb_plugin()],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            **extra,
        }
        (self.workdir / "orthanc.json").write_text(json.dumps(self.config, indent=2))
        self.log_path = self.workdir / "orthanc.log"
        self._log = self.log_path.open("wb")
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        # Debian's dcmtk leaves Nagle's algorithm on unless TCP_NODELAY is set: each DIMSE
        # message would then wait about 40 ms for a delayed ACK.
        self.process = subprocess.Popen(
            [binary, str(self.workdir / "orthanc.json")],
            stdout=self._log,
            stderr=self._log,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def dimse(self) -> str:
        return f"dicom://{self.AE_TITLE}@127.0.0.1:{self.dicom_port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_SECONDS
        # One client for every poll (a top-level httpx.get builds an SSL context each time).
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    log = self.log_path.read_text(errors="replace")
                    raise RuntimeError(f"Orthanc exited: {log}")
                try:
                    if client.get(f"{self.dicomweb}/studies").status_code in (200, 204):
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("Orthanc did not become ready")

    def load(self, paths: Iterable[Path]) -> int:
        """POST each file to Orthanc's REST API; how many it took."""
        taken = 0
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for path in paths:
                r = client.post("/instances", content=path.read_bytes())
                r.raise_for_status()
                taken += 1
        return taken

    def load_zip(self, paths: Iterable[Path]) -> list[str]:
        """POST the files in one zip to Orthanc's REST API, which keeps those it accepts; the
        Orthanc IDs of the instances it stored (not those it had already)."""
        body = io.BytesIO()
        with zipfile.ZipFile(body, "w", zipfile.ZIP_STORED) as archive:
            for n, path in enumerate(paths):
                archive.write(path, f"{n:04d}-{path.name}")
        r = httpx.post(f"{self.url}/instances", content=body.getvalue(), timeout=300)
        r.raise_for_status()
        return [item["ID"] for item in r.json() if item.get("Status") == "Success"]

    def delete_ids(self, ids: Iterable[str]) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for orthanc_id in ids:
                client.delete(f"/instances/{orthanc_id}").raise_for_status()

    def delete(self, sop_instance_uid: str) -> None:
        """Delete the instance of that SOP Instance UID, as an operator of the PACS would."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            found = client.post("/tools/lookup", content=sop_instance_uid).json()
            (instance,) = [f for f in found if f["Type"] == "Instance"]
            client.delete(f"/instances/{instance['ID']}").raise_for_status()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
