"""Migration throughput from a legacy PACS (Orthanc), against the PACS's own sending rate.

Usage:  .venv/bin/python bench/migrate.py [--studies 300] [--per-study 10] [--rows 128]
                                          [--concurrency 1,4] [--memory-instances 10000]
                                          [--set durable=false ...]

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
  migration of ``--memory-instances`` more small instances (and the corpus above).

Rates are instances and megabytes per second of wall time, from the command's start to its
end for nubis (listing included) and from the first C-MOVE to the last for the baseline.
Each configuration runs into a new, empty archive; storescp's folder is emptied between runs.
TCP_NODELAY=1 is set for every process (Debian's dcmtk, in Orthanc and storescp, leaves
Nagle's algorithm on otherwise; see bench/dimse.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if sample_memory:
        status = Path(f"/proc/{proc.pid}/status")
        while proc.poll() is None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append((time.monotonic() - started, int(line.split()[1])))
            except OSError:
                break
            time.sleep(0.5)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - started
    shutil.rmtree(data, ignore_errors=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nubis migrate failed: {stderr[-2000:]}")
    result = json.loads(stdout)
    result["wall_seconds"] = round(wall, 2)
    result["rss_kb"] = samples
    return result


def _memory(result: dict[str, Any]) -> dict[str, Any]:
    """Resident memory at fractions of the run's wall time, and its peak (MB)."""
    samples = [kb for _t, kb in result["rss_kb"]]
    if not samples:
        return {}
    at = {
        f"{int(q * 100)}%": round(samples[int(q * (len(samples) - 1))] / 1024, 1)
        for q in (0.1, 0.25, 0.5, 0.75, 1.0)
    }
    return {
        "instances": result["instances_stored"],
        "wall_seconds": result["wall_seconds"],
        "rss_mb_at": at,
        "rss_mb_peak": round(max(samples) / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--per-study", type=int, default=10)
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--memory-instances", type=int, default=10000)
    parser.add_argument(
        "--set", action="append", default=[], help="A nubis setting NAME=VALUE (repeatable)."
    )
    args = parser.parse_args()
    for item in args.set:
        SETTINGS.extend(["--set", item])
    os.environ["TCP_NODELAY"] = "1"
    levels = [int(c) for c in args.concurrency.split(",")]
    paths = corpus(args.studies, args.per_study, args.rows, seed=1200)
    total = len(paths)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    scp_port, move_port = free_port(), free_port()
    modalities = {
        "storescp": ["STORESCP", "127.0.0.1", scp_port],
        "nubis": ["NUBIS", "127.0.0.1", move_port],
    }
    rows: list[tuple[str, float, float]] = []
    memory: dict[str, Any] = {}
    with OrthancServer(extra={"DicomAet": "LEGACY", "DicomModalities": modalities}) as pacs:
        t = time.monotonic()
        load(pacs, paths)
        print(f"loaded {total} instances ({size_mb:.0f} MB) into Orthanc in "
              f"{time.monotonic() - t:.0f} s")  # fmt: skip
        uids = study_uids(pacs)
        dimse = f"dicom://LEGACY@127.0.0.1:{pacs.dicom_port}"
        for c in levels:
            seconds = baseline(pacs, scp_port, uids, c)
            rows.append((f"Orthanc -> storescp, C-MOVE, {c} assoc.", seconds, seconds))
            r = migrate(dimse, "--listen-port", str(move_port), "--concurrency", str(c))
            assert r["instances_stored"] == total, r
            rows.append((f"nubis migrate C-MOVE, concurrency {c}", r["wall_seconds"], r["seconds"]))
            r = migrate(pacs.dicomweb_url, "--concurrency", str(c))
            assert r["instances_stored"] == total, r
            rows.append(
                (f"nubis migrate DICOMweb, concurrency {c}", r["wall_seconds"], r["seconds"])
            )
        if args.memory_instances:
            more = corpus(args.memory_instances // 10, 10, 32, seed=1201)
            load(pacs, more)
            r = migrate(dimse, "--listen-port", str(move_port), "--concurrency", "2",
                        sample_memory=True)  # fmt: skip
            memory = _memory(r)
    print(
        f"\n{orthanc_version()}; corpus {args.studies} studies x {args.per_study} instances "
        f"of {args.rows}x{args.rows} CT = {total} instances, {size_mb:.0f} MB"
    )
    print(f"{'run':45} {'wall s':>8} {'inst/s':>8} {'MB/s':>7} {'vs base':>8}")
    base = None
    for name, wall, _moving in rows:
        if name.startswith("Orthanc"):
            base = wall
        print(f"{name:45} {wall:8.1f} {total / wall:8.1f} {size_mb / wall:7.1f} "
              f"{(base / wall if base else 0):8.0%}")  # fmt: skip
    if memory:
        print(f"\nmemory over {memory['instances']} instances ({memory['wall_seconds']} s): "
              f"RSS MB at {memory['rss_mb_at']}, peak {memory['rss_mb_peak']}")  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "migrate.json").write_text(
        json.dumps({"rows": rows, "memory": memory, "instances": total}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
