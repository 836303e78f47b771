"""Side-by-side DIMSE benchmark: Orthanc (Debian package) vs nubis, same corpus, one run.

Usage:  .venv/bin/python bench/dimse.py [--targets orthanc,nubis] [--find-requests 100]

Figures (issue #3):
- C-STORE with dcmtk storescu, one association (200 x 0.5 MB CT) and four associations
  (4 x 50), instances/s;
- C-FIND at study level by PatientID over 2,000 studies, p50: one findscu process per query
  (what a script or a PACS integration pays) and a pynetdicom client on one association.

Both servers run on 127.0.0.1 with their shipped defaults (nubis: durable=true, fsync before
each acknowledgement), except that TCP_NODELAY=1 is set for every process: Debian's dcmtk, which
Orthanc and the dcmtk tools use, leaves Nagle's algorithm on unless that variable is set, and
then each C-STORE waits about 40 ms for a delayed ACK (Orthanc: 17 inst/s instead of 160).
The corpora are those of bench/run.py (cached in results/corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(ROOT / "src"))

from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    StudyRootQueryRetrieveInformationModelFind,  # type: ignore[attr-defined]
)

from nubis.tools import synth  # noqa: E402
from orthanc import OrthancServer, free_port, orthanc_version  # noqa: E402

CORPUS = BENCH_DIR / "results" / "corpus"
RESULTS = BENCH_DIR / "results"


class OrthancDimse(OrthancServer):
    """Orthanc with C-FIND open to any caller (its default lets unknown AEs store only)."""

    def _write_config(self) -> Path:
        path = super()._write_config()
        config = json.loads(path.read_text())
        config.update({"DicomAlwaysAllowFind": True, "DicomAlwaysAllowEcho": True})
        path.write_text(json.dumps(config, indent=2))
        return path


class NubisServer:
    def __init__(self) -> None:
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-nubis-dimse-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import httpx

        log = (self.workdir / "nubis.log").open("wb")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/nubis"), "serve", "--data-dir", str(self.workdir / "data"),
             "--http-port", str(self.http_port), "--dimse-port", str(self.dicom_port),
             "--set", "log_level=warning"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("nubis did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def storescu(port: int, aec: str, files: list[Path], aet: str = "BENCH") -> None:
    subprocess.run(
        ["storescu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files)],
        check=True, capture_output=True,
    )  # fmt: skip


def store_rate(port: int, aec: str, files: list[Path], associations: int) -> float:
    groups = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        list(pool.map(lambda g: storescu(port, aec, g, f"BENCH{groups.index(g)}"), groups))
    return len(files) / (time.perf_counter() - start)


def findscu_p50(port: int, aec: str, patient_ids: list[str]) -> float:
    times = []
    for pid in patient_ids:
        start = time.perf_counter()
        proc = subprocess.run(
            ["findscu", "-S", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={pid}",
             "-k", "StudyInstanceUID", "-k", "PatientName", "-k", "StudyDate"],
            capture_output=True, text=True,
        )  # fmt: skip
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
    return statistics.median(times) * 1000


def _nodelay(event: Any) -> None:
    # The client's own Nagle would hold each request's data set PDU for the server's delayed
    # ACK, adding ~40 ms to every query whatever the server; both targets get the same client.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pynetdicom_p50(port: int, aec: str, patient_ids: list[str]) -> tuple[float, int]:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=aec, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established, "C-FIND association refused"
    times, matches = [], 0
    try:
        for pid in patient_ids:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.PatientID = pid
            ds.StudyInstanceUID = ""
            ds.PatientName = ""
            ds.StudyDate = ""
            start = time.perf_counter()
            for status, found in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
                if found is not None and status.Status in (0xFF00, 0xFF01):
                    matches += 1
            times.append(time.perf_counter() - start)
    finally:
        assoc.release()
    return statistics.median(times) * 1000, matches


def run_target(name: str, args: argparse.Namespace) -> dict[str, Any]:
    stow = sorted((CORPUS / "stow-400").rglob("*.dcm"))
    qido = sorted((CORPUS / "qido-2000").rglob("*.dcm"))
    if len(stow) != 400 or len(qido) < 2000:
        raise SystemExit("corpus missing: run bench/run.py --quick once to build it")
    one, four = stow[:200], stow[200:]
    if name == "orthanc":
        server: Any = OrthancDimse(log_dir=RESULTS / "logs")
        server.start()
        port, aec = server.dicom_port, "ORTHANC"
    else:
        server = NubisServer()
        server.start()
        port, aec = server.dicom_port, "NUBIS"
    try:
        fig: dict[str, Any] = {}
        fig["store_1_assoc_per_s"] = store_rate(port, aec, one, 1)
        print(f"[{name}] C-STORE 1 association: {fig['store_1_assoc_per_s']:.0f}/s", flush=True)
        fig["store_4_assoc_per_s"] = store_rate(port, aec, four, 4)
        print(f"[{name}] C-STORE 4 associations: {fig['store_4_assoc_per_s']:.0f}/s", flush=True)
        store_rate(port, aec, qido, 4)  # load, untimed
        ids = synth.corpus_patient_ids(2000, seed=3)
        rng = random.Random(7)
        chosen = [rng.choice(ids) for _ in range(args.find_requests)]
        fig["find_findscu_p50_ms"] = findscu_p50(port, aec, chosen[: args.find_requests // 2])
        print(f"[{name}] C-FIND findscu p50: {fig['find_findscu_p50_ms']:.1f} ms", flush=True)
        p50, matches = pynetdicom_p50(port, aec, chosen)
        fig["find_pynetdicom_p50_ms"], fig["find_matches"] = p50, matches
        print(f"[{name}] C-FIND pynetdicom p50: {p50:.1f} ms ({matches} matches)", flush=True)
        return fig
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default="orthanc,nubis")
    parser.add_argument("--find-requests", type=int, default=200)
    args = parser.parse_args()
    # Inherited by Orthanc and the dcmtk tools: see the module docstring.
    os.environ["TCP_NODELAY"] = "1"
    results = {name: run_target(name, args) for name in args.targets.split(",")}
    rows = [
        ("C-STORE storescu 1 association (inst/s)", "store_1_assoc_per_s", True),
        ("C-STORE storescu 4 associations (inst/s)", "store_4_assoc_per_s", True),
        ("C-FIND study by PatientID, findscu p50 (ms)", "find_findscu_p50_ms", False),
        ("C-FIND study by PatientID, pynetdicom p50 (ms)", "find_pynetdicom_p50_ms", False),
    ]
    print(f"\n{orthanc_version()}")
    print(f"{'figure':50} {'orthanc':>10} {'nubis':>10} {'ratio':>7}")
    for label, key, higher_better in rows:
        o = results.get("orthanc", {}).get(key)
        n = results.get("nubis", {}).get(key)
        ratio = (n / o if higher_better else o / n) if o and n else float("nan")
        print(f"{label:50} {o or float('nan'):10.1f} {n or float('nan'):10.1f} {ratio:6.2f}x")
    out = RESULTS / f"dimse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
