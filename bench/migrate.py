"""Migration throughput from a legacy PACS (Orthanc), against the PACS's own sending rate.

Usage:  .venv/bin/python bench/migrate.py [--studies 300] [--per-study 10] [--rows 128]
                                          [--concurrency 1,4] [--memory-instances 10000]
                                          [--memory-only] [--set durable=false ...]

Figures (issue 12), in one run against one Orthanc (Debian's package, bench/orthanc.py):

- **baseline**: the same Orthanc sends the same studies to dcmtk's ``storescp`` by C-MOVE,
  study by study, on ``c`` associations at once (the source's own limit: nothing on the
  receiving side is slower than storescp writing files);
- **nubis C-MOVE**: ``nubis migrate run dicom://...`` with ``--concurrency c``: lists the
  studies (C-FIND), lists each study's instances (C-FIND series and image level), C-MOVEs
  it to its own receiver and stores every object through the store service (the archive's
  defaults: fsync before each acknowledgement, encryption at rest, audit records);
- **nubis DICOMweb**: the same from Orthanc's DICOMweb plugin (QIDO-RS, WADO-RS);
- **memory**: the resident memory of ``nubis migrate`` sampled every half second over a
  migration of ``--memory-instances`` more small instances (and the corpus above), read
  against the job's progress in the index: RSS at 10 %, 50 % and 100 % of the instances,
  split into anonymous memory (heap, SQLite's page caches) and file pages mapped (SQLite's
  memory-mapped index). ``--memory-only`` runs only this (no corpus above, no baseline).

Rates are instances and megabytes per second of wall time, from the command's start to its
end for nubis (listing included) and from the first C-MOVE to the last for the baseline;
``job`` is the rate the job itself reports, from its first study to its last (what a long
migration approaches: without the process's start, opening the archive and listing studies).
Each configuration runs into a new, empty archive; storescp's folder is emptied between runs.
TCP_NODELAY=1 is set for every process (Debian's dcmtk, in Orthanc and storescp, leaves
Nagle's algorithm on otherwise; see bench/dimse.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nubis.tools import synth
from orthanc import OrthancServer, free_port, orthanc_version

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
NUBIS = [sys.executable, "-m", "nubis"]


def corpus(studies: int, per_study: int, rows: int, seed: int) -> list[Path]:
    folder = RESULTS / "corpus" / f"migrate-{studies}x{per_study}-{rows}-{seed}"
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        synth.make_corpus(
            folder, n_studies=studies, instances_per_series=per_study, rows=rows,
            columns=rows, seed=seed, modalities=("CT",),
        )  # fmt: skip
        done.write_text("")
    return sorted(p for p in folder.rglob("*.dcm"))


def load(pacs: OrthancServer, paths: list[Path]) -> None:
    def post(chunk: list[Path]) -> None:
        with httpx.Client(base_url=pacs.base_url, timeout=120) as client:
            for path in chunk:
                client.post("/instances", content=path.read_bytes()).raise_for_status()

    chunks = [paths[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(post, chunks))


def study_uids(pacs: OrthancServer) -> list[str]:
    r = httpx.get(f"{pacs.base_url}/studies", timeout=60)
    uids = []
    for orthanc_id in r.json():
        tags = httpx.get(f"{pacs.base_url}/studies/{orthanc_id}", timeout=60).json()
        uids.append(tags["MainDicomTags"]["StudyInstanceUID"])
    return uids


def baseline(pacs: OrthancServer, port: int, uids: list[str], threads: int) -> float:
    """Seconds for Orthanc to C-MOVE every study in ``uids`` to storescp on ``port``."""
    out = Path(tempfile.mkdtemp(prefix="bench-storescp-"))
    scp = subprocess.Popen(
        ["storescp", "--aetitle", "STORESCP", "--output-directory", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        queue = list(uids)
        lock = threading.Lock()

        def worker() -> None:
            ae = AE(ae_title="NUBIS")
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = ae.associate("127.0.0.1", pacs.dicom_port, ae_title="LEGACY")
            assert assoc.is_established
            try:
                while True:
                    with lock:
                        if not queue:
                            return
                        uid = queue.pop()
                    ds = Dataset()
                    ds.QueryRetrieveLevel = "STUDY"
                    ds.StudyInstanceUID = uid
                    last = None
                    for status, _ in assoc.send_c_move(
                        ds, "STORESCP", StudyRootQueryRetrieveInformationModelMove
                    ):
                        last = status
                    assert last is not None and int(last.Status) == 0, last
            finally:
                assoc.release()

        started = time.monotonic()
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return time.monotonic() - started
    finally:
        scp.terminate()
        scp.wait(timeout=10)
        shutil.rmtree(out, ignore_errors=True)


SETTINGS: list[str] = []  # --set NAME=VALUE for every nubis migrate run


def migrate(source: str, *options: str, sample_memory: bool = False) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    args = [*NUBIS, "migrate", "run", source, *options, "--data-dir", str(data),
            "--set", "log_level=warning", *SETTINGS]  # fmt: skip
    samples: list[dict[str, float]] = []
    # Run from compiled bytecode, as an installed nubis does: with PYTHONDONTWRITEBYTECODE
    # set (it is in some shells), every run compiled nubis's sources anew, ~0.5 s of its wall.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(RESULTS / "pycache")
    started = time.monotonic()
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    if sample_memory:
        samples = _sample(proc, data / "index.sqlite", started)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - started
    shutil.rmtree(data, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nubis migrate failed: {stderr[-2000:]}")
    result = json.loads(stdout)
    result["wall_seconds"] = round(wall, 2)
    result["samples"] = samples
    return result


def _load() -> float:
    """The one-minute load average as the run ends (the machine is shared)."""
    return round(os.getloadavg()[0], 1)


def _sample(proc: subprocess.Popen[str], index: Path, started: float) -> list[dict[str, float]]:
    """Every half second until ``proc`` ends: its resident memory (kB: VmRSS, RssAnon,
    RssFile) and the migrate job's progress as saved in the index (instances done, total)."""
    status = Path(f"/proc/{proc.pid}/status")
    samples: list[dict[str, float]] = []
    done, total = 0, 0
    while proc.poll() is None:
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            break
        if index.exists():
            try:
                with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=1) as db:
                    row = db.execute(
                        "SELECT progress_done, progress_total FROM jobs WHERE kind = 'migrate'"
                    ).fetchone()
                if row is not None:
                    done, total = row[0], row[1] or 0
            except sqlite3.Error:
                pass  # the index is being created or migrated: the last progress read stands
        sample = {"t": time.monotonic() - started, "done": done, "total": total}
        for name in ("VmRSS", "RssAnon", "RssFile"):
            if name in fields:
                sample[name] = int(fields[name].split()[0])
        samples.append(sample)
        time.sleep(0.5)
    return samples


def _memory(result: dict[str, Any]) -> dict[str, Any]:
    """Resident memory (MB) when 10 % and 50 % of the instances were first seen done, at the
    last sample before the job said it was done (100 %: it saves its progress about once a
    second, and with the last it closes the archive, whose connections unmap the index), and
    its peak."""
    samples = [s for s in result["samples"] if "VmRSS" in s]
    if not samples:
        return {}
    total = max(s["total"] for s in samples) or 1

    def at(fraction: float) -> dict[str, float]:
        if fraction < 1:
            s = next((s for s in samples if s["done"] >= fraction * total), samples[-1])
        else:
            s = [s for s in samples if s["done"] < total][-1]
        return {
            "rss": round(s["VmRSS"] / 1024, 1),
            "anon": round(s.get("RssAnon", 0) / 1024, 1),
            "file": round(s.get("RssFile", 0) / 1024, 1),
            "done": int(s["done"]),
            "t": round(s["t"], 1),
        }

    return {
        "instances": result["instances_stored"],
        "wall_seconds": result["wall_seconds"],
        "rss_mb_at": {f"{int(q * 100)}%": at(q) for q in (0.1, 0.5, 1.0)},
        "rss_mb_peak": round(max(s["VmRSS"] for s in samples) / 1024, 1),
        "anon_mb_peak": round(max(s.get("RssAnon", 0) for s in samples) / 1024, 1),
    }


def _print_memory(memory: dict[str, Any]) -> None:
    print(f"\nmemory over {memory['instances']} instances ({memory['wall_seconds']} s, load "
          f"average {os.getloadavg()[0]:.1f} at the end):")  # fmt: skip
    print("  MB resident (anonymous + mapped files)")
    for name, m in memory["rss_mb_at"].items():
        print(f"  {name:>4} ({m['done']:>6} done, {m['t']:6.1f} s): {m['rss']:6.1f} "
              f"({m['anon']:.1f} + {m['file']:.1f})")  # fmt: skip
    print(f"  peak {memory['rss_mb_peak']} (anonymous {memory['anon_mb_peak']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--per-study", type=int, default=10)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--memory-instances", type=int, default=10000)
    parser.add_argument(
        "--memory-only", action="store_true", help="Only the memory run (no corpus, baseline)."
    )
    parser.add_argument(
        "--set", action="append", default=[], help="A nubis setting NAME=VALUE (repeatable)."
    )
    args = parser.parse_args()
    for item in args.set:
        SETTINGS.extend(["--set", item])
    os.environ["TCP_NODELAY"] = "1"
    levels = [int(c) for c in args.concurrency.split(",")]
    paths = [] if args.memory_only else corpus(args.studies, args.per_study, args.rows, 1200)
    total = len(paths)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    scp_port, move_port = free_port(), free_port()
    modalities = {
        "storescp": ["STORESCP", "127.0.0.1", scp_port],
        "nubis": ["NUBIS", "127.0.0.1", move_port],
    }
    rows: list[tuple[str, float, float, float]] = []
    memory: dict[str, Any] = {}
    with OrthancServer(extra={"DicomAet": "LEGACY", "DicomModalities": modalities}) as pacs:
        dimse = f"dicom://LEGACY@127.0.0.1:{pacs.dicom_port}"
        if paths:
            t = time.monotonic()
            load(pacs, paths)
            print(f"loaded {total} instances ({size_mb:.0f} MB) into Orthanc in "
                  f"{time.monotonic() - t:.0f} s")  # fmt: skip
            uids = study_uids(pacs)
        for c in levels if paths else []:
            seconds = baseline(pacs, scp_port, uids, c)
            rows.append((f"Orthanc -> storescp, C-MOVE, {c} assoc.", seconds, seconds, _load()))
            r = migrate(dimse, "--listen-port", str(move_port), "--concurrency", str(c))
            assert r["instances_stored"] == total, r
            rows.append(
                (f"nubis migrate C-MOVE, concurrency {c}", r["wall_seconds"], r["seconds"], _load())
            )
            r = migrate(pacs.dicomweb_url, "--concurrency", str(c))
            assert r["instances_stored"] == total, r
            rows.append(
                (
                    f"nubis migrate DICOMweb, concurrency {c}",
                    r["wall_seconds"],
                    r["seconds"],
                    _load(),
                )
            )
        if args.memory_instances:
            more = corpus(args.memory_instances // 10, 10, 32, seed=1201)
            load(pacs, more)
            r = migrate(dimse, "--listen-port", str(move_port), "--concurrency", "2",
                        sample_memory=True)  # fmt: skip
            memory = _memory(r)
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "migrate-memory.json").write_text(json.dumps(r["samples"]))
    if rows:
        print(
            f"\n{orthanc_version()}; corpus {args.studies} studies x {args.per_study} instances "
            f"of {args.rows}x{args.rows} CT = {total} instances, {size_mb:.0f} MB"
        )
        print(f"{'run':45} {'wall s':>8} {'inst/s':>8} {'MB/s':>7} {'vs base':>8} "
              f"{'job s':>7} {'job vs base':>11}  load")  # fmt: skip
    base = None
    for name, wall, job, load_avg in rows:
        if name.startswith("Orthanc"):
            base = wall
        print(f"{name:45} {wall:8.1f} {total / wall:8.1f} {size_mb / wall:7.1f} "
              f"{(base / wall if base else 0):8.0%} {job:7.1f} {(base / job if base else 0):11.0%}"
              f"  {load_avg:.1f}")  # fmt: skip
    if memory:
        _print_memory(memory)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "migrate.json").write_text(
        json.dumps({"rows": rows, "memory": memory, "instances": total}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
