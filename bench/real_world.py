"""Which real-world files nubis and Orthanc accept, side by side (issue 12).

Usage:  .venv/bin/python bench/real_world.py [--json results.json] [--set NAME=VALUE ...]

The corpus is every PS3.10 file (128-byte preamble, then ``DICM``) of pydicom's bundled test
files and, when installed, of the ``pydicom-data`` package (the test extra installs it). Each
file is sent to both archives on its own, as one STOW-RS request, in the same order (sorted
by name: several files hold one instance in several encodings); a file is accepted when the
response lists its instance in ReferencedSOPSequence (200, or 202 with a warning). Orthanc
is Debian's package with its DICOMweb plugin (bench/orthanc.py); nubis is ``nubis serve`` of
this checkout with its shipped defaults (``--set`` adds settings). Both start on empty storage
and are stopped at the end. Printed: the counts, the files Orthanc accepts and nubis refuses
(with nubis's reason), and the other way round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from nubis.tools.real_world import part10_files  # noqa: E402
from orthanc import OrthancServer, free_port, orthanc_version  # noqa: E402

TOKEN = "nubis-real-world-admin-token-0123456789abcdef"
BOUNDARY = "nubis-real-world"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@contextlib.contextmanager
def nubis_server(extra: list[str]) -> Iterator[str]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-nubis-real-"))
    port = free_port()
    log = (workdir / "nubis.log").open("wb")
    args = [str(ROOT / ".venv/bin/nubis"), "serve", "--data-dir", str(workdir / "data"),
            "--http-port", str(port), "--set", "dimse_port=0",
            "--set", "log_level=warning"]  # fmt: skip
    for item in extra:
        args += ["--set", item]
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NUBIS_ADMIN_TOKEN": TOKEN}
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"nubis did not start; see {workdir / 'nubis.log'}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def stow_one(client: httpx.Client, base: str, data: bytes) -> dict[str, Any]:
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    response = client.post(
        f"{base}/studies",
        content=body,
        headers={"Content-Type": CONTENT_TYPE, "Accept": "application/dicom+json"},
    )
    result: dict[str, Any] = {"http": response.status_code, "accepted": False, "reason": None}
    try:
        answer = response.json() if response.content else {}
    except ValueError:
        answer = {}
    referenced = answer.get("00081199", {}).get("Value", [])
    failed = answer.get("00081198", {}).get("Value", [])
    result["accepted"] = bool(referenced)
    if referenced and "00081196" in referenced[0]:
        result["warning"] = f"0x{referenced[0]['00081196']['Value'][0]:04X}"
    if failed:
        status = failed[0].get("00081197", {}).get("Value", [None])[0]
        result["reason"] = None if status is None else f"0x{status:04X}"
    warning = response.headers.get("warning")
    if warning:
        result["said"] = warning[:300]
    return result


def run(files: list[Path], base: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with httpx.Client(
        timeout=120.0, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:  # Orthanc (authentication off) ignores the header
        for path in files:
            out[path.name] = stow_one(client, base, path.read_bytes())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write every file's outcome here")
    parser.add_argument("--set", action="append", default=[], help="a nubis setting NAME=VALUE")
    args = parser.parse_args()
    files = part10_files()
    print(f"{len(files)} PS3.10 files (pydicom test files and pydicom-data)")
    with OrthancServer() as orthanc:
        by_orthanc = run(files, orthanc.dicomweb_url)
    with nubis_server(args.set) as base:
        by_nubis = run(files, base)
    o = {n for n, r in by_orthanc.items() if r["accepted"]}
    n = {n for n, r in by_nubis.items() if r["accepted"]}
    warned = sum(1 for r in by_nubis.values() if r.get("warning"))
    print(orthanc_version())
    print(f"accepted: Orthanc {len(o)}, nubis {len(n)} ({warned} with a warning); "
          f"both {len(o & n)}, Orthanc only {len(o - n)}, nubis only {len(n - o)}")  # fmt: skip
    for title, names, side in (
        ("Orthanc accepts, nubis refuses", sorted(o - n), by_nubis),
        ("nubis accepts, Orthanc refuses", sorted(n - o), by_orthanc),
    ):
        if names:
            print(f"\n{title}:")
            for name in names:
                r = side[name]
                print(f"  {name}: HTTP {r['http']} {r['reason'] or ''} {r.get('said', '')}")
    if args.json:
        args.json.write_text(
            json.dumps({"orthanc": by_orthanc, "nubis": by_nubis}, indent=1, sort_keys=True)
        )


if __name__ == "__main__":
    main()
