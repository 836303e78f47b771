"""Backup and restore throughput against the disk's own copy rate (issue 13).

Imports a synthetic corpus into a fresh archive (encrypted at rest, the default), then times in
one run, on the same disk: ``cp -r`` of the blob folder (the disk's copy rate, page cache
dropped where allowed), ``nubis backup --to`` (first, full), a second backup with nothing new
(the incremental path), ``nubis backup verify`` and ``nubis restore`` (with and without reading
every object back). Prints one JSON object: each command's wall time with the CLI's start-up,
as an operator sees it, and (``job``, ``restore``) the time the command itself reported.

    .venv/bin/python bench/backup.py --instances 400
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nubis.tools.synth import make_ct_series

_SETTINGS = ("--set", "durable=false")


def _nubis(*args: str) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "nubis", *args], capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"nubis {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def _job(said: str) -> dict[str, Any]:
    """The seconds and rate the command itself reported (its start-up left out)."""
    result = json.loads(said[said.index("{") :])
    return {"seconds": result["seconds"], "mb_per_s": result["mb_per_s"]}


def _drop_caches() -> None:
    """Cold reads for each copy, where this process may drop the page cache (root)."""
    subprocess.run(["sync"], check=False)
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=400, help="512x512 CT objects")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nubis-bench-backup-"))
    try:
        files = root / "files"
        for start in range(0, args.instances, 100):
            make_ct_series(
                files / str(start), n_instances=min(100, args.instances - start), seed=start
            )
        source = root / "source"
        _nubis("import", str(files), "--data-dir", str(source), *_SETTINGS)
        blob_bytes = _size(source / "blobs")
        figures: dict[str, Any] = {"instances": args.instances, "blob_mb": blob_bytes / 1e6}

        def rate(seconds: float) -> dict[str, float]:
            return {"seconds": round(seconds, 2), "mb_per_s": round(blob_bytes / 1e6 / seconds)}

        _drop_caches()
        started = time.monotonic()
        subprocess.run(["cp", "-r", str(source / "blobs"), str(root / "cp")], check=True)
        figures["cp_r"] = rate(time.monotonic() - started)
        _drop_caches()
        seconds, said = _nubis(
            "backup", "--to", str(root / "B"), "--data-dir", str(source), *_SETTINGS
        )
        figures["backup_full"] = {**rate(seconds), "job": _job(said)}
        seconds, said = _nubis(
            "backup", "--to", str(root / "B"), "--data-dir", str(source), *_SETTINGS
        )
        figures["backup_nothing_new"] = {"seconds": round(seconds, 2), "job": _job(said)}
        _drop_caches()
        seconds, _ = _nubis("backup", "verify", str(root / "B"))
        figures["verify"] = rate(seconds)
        keys = ("--keyring", str(source / "keyring.jsonl"),
                "--audit-key", str(source / "audit-signing.key"))  # fmt: skip
        for name, check in (("restore_no_check", "--no-check"), ("restore_checked", "--check")):
            _drop_caches()
            target = root / name
            seconds, said = _nubis(
                "restore", "--from", str(root / "B"), "--data-dir", str(target), check, *keys,
                *_SETTINGS,
            )  # fmt: skip
            figures[name] = {**rate(seconds), "restore": _job(said)}
        figures["cpus"] = os.cpu_count()
        print(json.dumps(figures, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
