"""Side-by-side DIMSE benchmark: Orthanc (Debian package) vs nubis, same corpus, one run.

Usage:  .venv/bin/python bench/dimse.py [--targets orthanc,nubis] [--find-requests 200]

Figures (issue #3):
- C-STORE with dcmtk storescu, one association (200 x 0.5 MB CT) and four associations
  (4 x 50), instances/s;
- C-FIND at study level by PatientID over 2,000 studies, p50: one findscu process per query
  (what a script or a PACS integration pays) and a pynetdicom client on one association.

With them, what the clients cost by themselves, so a reader can tell server time from client
time: the findscu process alone (its port refused: start-up and data dictionary only), an
echoscu process (association set-up, C-ECHO, release) and a C-ECHO on the pynetdicom
association, interleaved with its C-FINDs. Every phase also records its wall time, the
server's CPU seconds (its process tree), the clients' CPU seconds and the rest of the
machine's ("other": work of other sessions; above a quarter of a core the phase is flagged),
and the load average: the machine has 2 cores shared with other work.

Both servers run on 127.0.0.1 with their shipped defaults (nubis: durable=true, fsync before
each acknowledgement, authentication, audit and encryption at rest on), except that
TCP_NODELAY=1 is set for every process: Debian's dcmtk, which Orthanc and the dcmtk tools use,
leaves Nagle's algorithm on unless that variable is set, and then each C-STORE waits about
40 ms for a delayed ACK (Orthanc: 17 inst/s instead of 160). The corpora are those of
bench/run.py (cached in results/corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(ROOT / "src"))

import pynetdicom.ae  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402
from pynetdicom.association import Association  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    StudyRootQueryRetrieveInformationModelFind,  # type: ignore[attr-defined]
    Verification,  # type: ignore[attr-defined]
)

from nubis.dimse.reactor import RaceFreePause  # noqa: E402
from nubis.tools import synth  # noqa: E402
from orthanc import OrthancServer, free_port, orthanc_version  # noqa: E402
from run import machine_busy_cpu, process_tree_cpu  # noqa: E402

CORPUS = BENCH_DIR / "results" / "corpus"
RESULTS = BENCH_DIR / "results"
OTHER_CPU_FLAG = 0.25  # cores of other work during a phase above which it is flagged


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
        raise RuntimeError(f"nubis did not start; see {self.workdir / 'nubis.log'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _client_cpu() -> float:
    """CPU seconds of this process (the pynetdicom client) and of its reaped children (the
    dcmtk tools)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def phase(name: str, server_pid: int, record: dict[str, Any]) -> Iterator[None]:
    """Record wall time, server / client / other CPU seconds and the load average of a phase."""
    load = os.getloadavg()[0]
    wall, server, client, machine = (
        time.perf_counter(),
        process_tree_cpu(server_pid),
        _client_cpu(),
        machine_busy_cpu(),
    )
    yield
    wall = time.perf_counter() - wall
    server = process_tree_cpu(server_pid) - server
    client = _client_cpu() - client
    other = max(0.0, machine_busy_cpu() - machine - server - client)
    record[name] = {
        "wall_s": round(wall, 3),
        "server_cpu_s": round(server, 3),
        "client_cpu_s": round(client, 3),
        "other_cpu_s": round(other, 3),
        "loadavg_1m_before": round(load, 2),
        "noisy": other / wall > OTHER_CPU_FLAG,
    }


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True)


def storescu(port: int, aec: str, files: list[Path], aet: str = "BENCH") -> None:
    proc = _run(["storescu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files)])
    if proc.returncode != 0:
        raise RuntimeError(f"storescu exited {proc.returncode}: {proc.stderr[-2000:]}")


def store_rate(port: int, aec: str, files: list[Path], associations: int) -> float:
    groups = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    with ThreadPoolExecutor(associations) as pool:
        list(pool.map(lambda i: storescu(port, aec, groups[i], f"BENCH{i}"), range(associations)))
    return len(files) / (time.perf_counter() - start)


def process_p50(
    make_args: Callable[[str], list[str]], patient_ids: list[str], refused: bool = False
) -> float:
    """p50 of one client process per patient ID; ``refused``: the connection must fail."""
    times = []
    for pid in patient_ids:
        start = time.perf_counter()
        proc = _run(make_args(pid))
        times.append(time.perf_counter() - start)
        if (proc.returncode != 0) != refused or (refused and "refused" not in proc.stderr):
            raise RuntimeError(f"{make_args(pid)[0]} exited {proc.returncode}: {proc.stderr}")
    return statistics.median(times) * 1000


def findscu_args(port: int, aec: str) -> Callable[[str], list[str]]:
    return lambda pid: [
        "findscu", "-S", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={pid}",
        "-k", "StudyInstanceUID", "-k", "PatientName", "-k", "StudyDate",
    ]  # fmt: skip


class _Requestor(RaceFreePause, Association):
    """pynetdicom's requestor with the race of its reactor pause closed (see RaceFreePause):
    otherwise a reply that comes back within a millisecond (a C-ECHO after a C-FIND, here) is
    sometimes taken by the client's own reactor and the client waits 30 s for it. Same
    client for both targets; it changes no timing otherwise."""

    def __init__(self, ae: Any, mode: str) -> None:
        self._init_pause()
        super().__init__(ae, mode)


pynetdicom.ae.Association = _Requestor  # type: ignore[misc]  # this process's client only


def _nodelay(event: Any) -> None:
    # The client's own Nagle would hold each request's data set PDU for the server's delayed
    # ACK, adding ~40 ms to every query whatever the server; both targets get the same client.
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pynetdicom_p50(port: int, aec: str, patient_ids: list[str]) -> tuple[float, float, int]:
    """C-FIND p50, C-ECHO p50 (interleaved, same association) and the number of matches."""
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=aec, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established, "C-FIND association refused"
    finds, echoes, matches = [], [], 0
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
            finds.append(time.perf_counter() - start)
            start = time.perf_counter()
            status = assoc.send_c_echo()
            echoes.append(time.perf_counter() - start)
            assert status is not None and status.Status == 0, "C-ECHO failed"
    finally:
        assoc.release()
    return statistics.median(finds) * 1000, statistics.median(echoes) * 1000, matches


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
    pid = server.proc.pid
    phases: dict[str, Any] = {}
    fig: dict[str, Any] = {"phases": phases}

    def say(key: str, label: str, unit: str) -> None:
        p = phases[key]
        print(
            f"[{name}] {label}: {fig[key]:.1f} {unit}  (server CPU {p['server_cpu_s']:.2f} s,"
            f" other CPU {p['other_cpu_s']:.2f} s, load {p['loadavg_1m_before']:.2f}"
            f"{', NOISY' if p['noisy'] else ''})",
            flush=True,
        )

    try:
        with phase("store_1_assoc_per_s", pid, phases):
            fig["store_1_assoc_per_s"] = store_rate(port, aec, one, 1)
        say("store_1_assoc_per_s", "C-STORE 1 association", "inst/s")
        with phase("store_4_assoc_per_s", pid, phases):
            fig["store_4_assoc_per_s"] = store_rate(port, aec, four, 4)
        say("store_4_assoc_per_s", "C-STORE 4 associations", "inst/s")
        store_rate(port, aec, qido, 4)  # load, untimed
        ids = synth.corpus_patient_ids(2000, seed=3)
        rng = random.Random(7)
        chosen = [rng.choice(ids) for _ in range(args.find_requests)]
        half = chosen[: args.find_requests // 2]
        with phase("find_findscu_p50_ms", pid, phases):
            fig["find_findscu_p50_ms"] = process_p50(findscu_args(port, aec), half)
        say("find_findscu_p50_ms", "C-FIND findscu p50", "ms")
        with phase("echoscu_p50_ms", pid, phases):
            fig["echoscu_p50_ms"] = process_p50(
                lambda _: ["echoscu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)],
                half,
            )
        say("echoscu_p50_ms", "echoscu p50 (association, C-ECHO, release)", "ms")
        refused = free_port()  # nothing listens there: findscu's own start-up, no server
        with phase("findscu_alone_p50_ms", pid, phases):
            fig["findscu_alone_p50_ms"] = process_p50(
                findscu_args(refused, aec), half, refused=True
            )
        say("findscu_alone_p50_ms", "findscu alone p50 (port refused)", "ms")
        with phase("find_pynetdicom_p50_ms", pid, phases):
            p50, echo_p50, matches = pynetdicom_p50(port, aec, chosen)
        fig["find_pynetdicom_p50_ms"], fig["find_matches"] = p50, matches
        fig["echo_pynetdicom_p50_ms"] = echo_p50
        phases["echo_pynetdicom_p50_ms"] = phases["find_pynetdicom_p50_ms"]
        say("find_pynetdicom_p50_ms", f"C-FIND pynetdicom p50 ({matches} matches)", "ms")
        say("echo_pynetdicom_p50_ms", "C-ECHO pynetdicom p50 (same association)", "ms")
        return fig
    finally:
        server.stop()


ROWS = [
    ("C-STORE storescu 1 association (inst/s)", "store_1_assoc_per_s", True),
    ("C-STORE storescu 4 associations (inst/s)", "store_4_assoc_per_s", True),
    ("C-FIND study by PatientID, findscu p50 (ms)", "find_findscu_p50_ms", False),
    ("C-FIND study by PatientID, pynetdicom p50 (ms)", "find_pynetdicom_p50_ms", False),
    ("  client floor: findscu alone, port refused (ms)", "findscu_alone_p50_ms", False),
    ("  echoscu: association + C-ECHO + release (ms)", "echoscu_p50_ms", False),
    ("  C-ECHO p50, pynetdicom, same association (ms)", "echo_pynetdicom_p50_ms", False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--targets", default="orthanc,nubis")
    parser.add_argument("--find-requests", type=int, default=200)
    args = parser.parse_args()
    # Inherited by Orthanc and the dcmtk tools: see the module docstring.
    os.environ["TCP_NODELAY"] = "1"
    results = {name: run_target(name, args) for name in args.targets.split(",")}
    print(f"\n{orthanc_version()}")
    print(f"{'figure':50} {'orthanc':>10} {'nubis':>10} {'ratio':>7}")
    for label, key, higher_better in ROWS:
        o = results.get("orthanc", {}).get(key)
        n = results.get("nubis", {}).get(key)
        ratio = (n / o if higher_better else o / n) if o and n else float("nan")
        print(f"{label:50} {o or float('nan'):10.1f} {n or float('nan'):10.1f} {ratio:6.2f}x")
    noisy = [
        f"{target}:{key}"
        for target, fig in results.items()
        for key, p in fig["phases"].items()
        if p["noisy"]
    ]
    if noisy:
        print(f"\nother work used over {OTHER_CPU_FLAG} core during: {', '.join(noisy)}")
    out = RESULTS / f"dimse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
