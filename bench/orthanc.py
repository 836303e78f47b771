"""Install and run Debian's Orthanc (with the DICOMweb plugin) as a benchmark target.

Orthanc runs as a child process with its own temporary storage and JSON configuration, on
free 127.0.0.1 ports; nothing is left running or installed as a service.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

PACKAGES = ("orthanc", "orthanc-dicomweb")
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return proc.returncode == 0 and "install ok installed" in proc.stdout


def ensure_installed() -> None:
    """apt-get install Orthanc and its DICOMweb plugin without starting their services."""
    missing = [p for p in PACKAGES if not _installed(p)]
    if not missing:
        return
    # Debian's maintainer scripts start orthanc.service; a policy-rc.d that exits 101
    # forbids that, so the only Orthanc running is the one this harness controls.
    created_policy = not POLICY_RC_D.exists()
    if created_policy:
        POLICY_RC_D.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        result = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], env=env
        )
        if result.returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
                env=env,
                check=True,
            )
    finally:
        if created_policy:
            POLICY_RC_D.unlink(missing_ok=True)


def find_dicomweb_plugin() -> Path:
    proc = subprocess.run(
        ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, check=True
    )
    candidates = [
        Path(line)
        for line in proc.stdout.splitlines()
        if "OrthancDicomWeb" in line and ".so" in line
    ]
    # Prefer the real shared object over version-named symlinks; both load the same code.
    for path in sorted(candidates, key=lambda p: (p.is_symlink(), len(str(p)))):
        if path.exists():
            return path
    raise RuntimeError("libOrthancDicomWeb.so not found in orthanc-dicomweb package")


def orthanc_version() -> str:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "orthanc"], capture_output=True, text=True
    )
    plugin = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "orthanc-dicomweb"], capture_output=True, text=True
    )
    return f"orthanc {proc.stdout.strip()}, orthanc-dicomweb {plugin.stdout.strip()}"


class OrthancServer:
    """Context manager: a private Orthanc on 127.0.0.1, DICOMweb root at /dicom-web/."""

    def __init__(
        self, *, log_dir: Path | None = None, extra: dict[str, object] | None = None
    ) -> None:
        self.extra = dict(extra or {})
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-orthanc-"))
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: dict[str, object] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    def _write_config(self) -> Path:
        storage = self.workdir / "storage"
        storage.mkdir()
        # Orthanc's defaults everywhere except what a private, local instance needs: its own
        # storage, ports, no authentication, and the DICOMweb plugin loaded. Storage
        # compression is off (also the default) so both archives store files as sent.
        self.config = {
            "Name": "bench-orthanc",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "StorageCompression": False,
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": [str(find_dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            **self.extra,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        return path

    def start(self, timeout: float = 60.0) -> None:
        ensure_installed()
        config = self._write_config()
        binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        log_path = (self.log_dir or self.workdir) / "orthanc.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [binary, str(config)], stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited early (code {self.proc.returncode}); see {log_path}"
                )
            try:
                r = httpx.get(f"{self.base_url}/system", timeout=2.0)
                if r.status_code == 200:
                    # The plugin registers its routes during startup too; wait for it.
                    r2 = httpx.get(
                        f"{self.dicomweb_url}/studies",
                        headers={"Accept": "application/dicom+json"},
                        timeout=2.0,
                    )
                    if r2.status_code in (200, 204):
                        self.version = r.json().get("Version", "?")
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not become ready within {timeout}s; see {log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


if __name__ == "__main__":
    with OrthancServer() as server:
        print(f"Orthanc {server.version} ready at {server.dicomweb_url} ({orthanc_version()})")
