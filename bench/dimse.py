"""Side-by-side DIMSE benchmark: Orthanc (Debian package) vs nubis, same corpus, one run.

Usage:  .venv/bin/python bench/dimse.py [--targets orthanc,nubis] [--find-requests 200]
                                        [--rounds 4] [--baseline OTHER_TREE/src]

Figures (issue #3):
- C-STORE with dcmtk storescu, one association (200 x 0.5 MB CT) and four associations
  (4 x 50), instances/s: the median of ``--rounds`` rounds, each on new instances;
- C-FIND at study level by PatientID over 2,000 studies, p50: one findscu process per query
  (what a script or a PACS integration pays) and a pynetdicom client on one association.

Both servers run at once and take turns: round by round for C-STORE, query by query for
C-FIND, who goes first alternating. The machine is shared (2 cores, other sessions' work
and a virtual machine's neighbours); taking turns puts both targets under the same
conditions, where one target after the other saw the client alone vary by half.

With them, what the clients cost by themselves, so a reader can tell server time from client
time: the findscu process alone (its port refused: start-up and data dictionary only), an
echoscu process (association set-up, C-ECHO, release) and a C-ECHO on the pynetdicom
association, interleaved with its C-FINDs. Every phase also records its wall time, each
server's CPU seconds (its process tree), the clients' CPU seconds and the rest of the
machine's ("other": work of other sessions; above a quarter of a core the phase is flagged),
and the load average.

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
from collections.abc import Iterator
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
    """``nubis serve`` of this checkout, or of the source folder ``src`` (a baseline)."""

    def __init__(self, src: Path | None = None) -> None:
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-nubis-dimse-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        if src is not None:
            # Ahead of the editable install's path: that tree's nubis package is imported.
            self.env["PYTHONPATH"] = os.pathsep.join(
                [str(src), *filter(None, [os.environ.get("PYTHONPATH")])]
            )

    def start(self) -> None:
        import httpx

        log = (self.workdir / "nubis.log").open("wb")
        self.proc = subprocess.Popen(
            [str(ROOT / ".venv/bin/nubis"), "serve", "--data-dir", str(self.workdir / "data"),
             "--http-port", str(self.http_port), "--dimse-port", str(self.dicom_port),
             "--set", "log_level=warning"],
            stdout=log, stderr=subprocess.STDOUT, env=self.env,
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
def phase(name: str, servers: dict[str, int], record: dict[str, Any]) -> Iterator[None]:
    """Record wall time, each server's CPU seconds, the clients' and the rest of the
    machine's ("other") CPU seconds, and the load average, of one phase."""
    load = os.getloadavg()[0]
    wall, client, machine = time.perf_counter(), _client_cpu(), machine_busy_cpu()
    server = {name: process_tree_cpu(pid) for name, pid in servers.items()}
    yield
    wall = time.perf_counter() - wall
    server = {name: process_tree_cpu(pid) - server[name] for name, pid in servers.items()}
    client = _client_cpu() - client
    other = max(0.0, machine_busy_cpu() - machine - sum(server.values()) - client)
    record.setdefault(name, []).append(
        {
            "wall_s": round(wall, 3),
            "server_cpu_s": {k: round(v, 3) for k, v in server.items()},
            "client_cpu_s": round(client, 3),
            "other_cpu_s": round(other, 3),
            "loadavg_1m_before": round(load, 2),
            "noisy": other / wall > OTHER_CPU_FLAG,
        }
    )


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


def timed_process(args: list[str], refused: bool = False) -> float:
    """Seconds one client process took; ``refused``: its connection must fail."""
    start = time.perf_counter()
    proc = _run(args)
    elapsed = time.perf_counter() - start
    if (proc.returncode != 0) != refused or (refused and "refused" not in proc.stderr):
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr}")
    return elapsed


def findscu_args(port: int, aec: str, pid: str) -> list[str]:
    return [
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


def _associate(port: int, aec: str) -> Any:
    ae = AE(ae_title="BENCH")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=aec, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established, f"association with {aec} refused"
    return assoc


def find_and_echo(assoc: Any, pid: str) -> tuple[float, float, int]:
    """Seconds of one C-FIND and of one C-ECHO on ``assoc``, and the C-FIND's matches."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = pid
    ds.StudyInstanceUID = ""
    ds.PatientName = ""
    ds.StudyDate = ""
    matches = 0
    start = time.perf_counter()
    for status, found in assoc.send_c_find(ds, StudyRootQueryRetrieveInformationModelFind):
        if found is not None and status.Status in (0xFF00, 0xFF01):
            matches += 1
    find = time.perf_counter() - start
    start = time.perf_counter()
    status = assoc.send_c_echo()
    echo = time.perf_counter() - start
    assert status is not None and status.Status == 0, "C-ECHO failed"
    return find, echo, matches


def _start(name: str, baseline: Path | None) -> tuple[Any, int, str]:
    if name == "orthanc":
        server: Any = OrthancDimse(log_dir=RESULTS / "logs")
        server.start()
        return server, server.dicom_port, "ORTHANC"
    server = NubisServer(baseline if name == "baseline" else None)
    server.start()
    return server, server.dicom_port, "NUBIS"


def _turns(names: list[str], i: int) -> list[str]:
    """The targets in the order of turn ``i``: who goes first rotates."""
    k = i % len(names)
    return names[k:] + names[:k]


def run(names: list[str], args: argparse.Namespace) -> dict[str, Any]:
    stow = sorted((CORPUS / "stow-2000").rglob("*.dcm"))
    qido = sorted((CORPUS / "qido-2000").rglob("*.dcm"))
    if len(stow) < 400 * args.rounds or len(qido) < 2000:
        raise SystemExit("corpus missing: run bench/run.py --full once to build it")
    started: dict[str, tuple[Any, int, str]] = {}
    try:
        for name in names:
            started[name] = _start(name, args.baseline)
        pids = {name: s.proc.pid for name, (s, _, _) in started.items()}
        phases: dict[str, Any] = {}
        # "" holds what belongs to no target (the client alone).
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in ["", *names]}

        def add(name: str, key: str, value: float) -> None:
            samples[name].setdefault(key, []).append(value)

        # C-STORE: rounds of 200 new instances on one association, then 200 on four, each
        # round every target in turn (who goes first alternates); figures are the medians.
        for r in range(args.rounds):
            batch = stow[400 * r : 400 * (r + 1)]
            for name in _turns(names, r):
                _, port, aec = started[name]
                with phase(f"{name}:store_1_assoc", pids, phases):
                    add(name, "store_1_assoc_per_s", store_rate(port, aec, batch[:200], 1))
                with phase(f"{name}:store_4_assoc", pids, phases):
                    add(name, "store_4_assoc_per_s", store_rate(port, aec, batch[200:], 4))
            print(
                f"round {r + 1}: "
                + ", ".join(
                    f"{n} {samples[n]['store_1_assoc_per_s'][-1]:.0f} / "
                    f"{samples[n]['store_4_assoc_per_s'][-1]:.0f} inst/s"
                    for n in names
                ),
                flush=True,
            )
        for name in names:  # the C-FIND corpus, untimed
            _, port, aec = started[name]
            store_rate(port, aec, qido, 4)

        ids = synth.corpus_patient_ids(2000, seed=3)
        rng = random.Random(7)
        chosen = [rng.choice(ids) for _ in range(args.find_requests)]
        half = chosen[: args.find_requests // 2]
        refused = free_port()  # nothing listens there: findscu's own start-up, no server
        # One client process per query, the targets taking turns query by query.
        with phase("findscu", pids, phases):
            for i, pid in enumerate(half):
                for name in _turns(names, i):
                    _, port, aec = started[name]
                    add(name, "find_findscu_ms", timed_process(findscu_args(port, aec, pid)))
                add("", "findscu_alone_ms", timed_process(findscu_args(refused, "X", pid), True))
        with phase("echoscu", pids, phases):
            for i, _pid in enumerate(half):
                for name in _turns(names, i):
                    _, port, aec = started[name]
                    echo = ["echoscu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)]
                    add(name, "echoscu_ms", timed_process(echo))
        # One pynetdicom association per target, the same queries in turn.
        assocs = {name: _associate(*started[name][1:]) for name in names}
        matches = dict.fromkeys(names, 0)
        try:
            with phase("pynetdicom", pids, phases):
                for i, pid in enumerate(chosen):
                    for name in _turns(names, i):
                        find, echo, found = find_and_echo(assocs[name], pid)
                        add(name, "find_pynetdicom_ms", find)
                        add(name, "echo_pynetdicom_ms", echo)
                        matches[name] += found
        finally:
            for assoc in assocs.values():
                assoc.release()
    finally:
        for server, _, _ in started.values():
            server.stop()

    alone = samples.pop("")["findscu_alone_ms"]
    results: dict[str, Any] = {"phases": phases}
    for name in names:
        s = samples[name]
        results[name] = {
            "store_1_assoc_per_s": statistics.median(s["store_1_assoc_per_s"]),
            "store_4_assoc_per_s": statistics.median(s["store_4_assoc_per_s"]),
            "store_1_assoc_rounds": [round(v, 1) for v in s["store_1_assoc_per_s"]],
            "store_4_assoc_rounds": [round(v, 1) for v in s["store_4_assoc_per_s"]],
            "find_findscu_p50_ms": statistics.median(s["find_findscu_ms"]) * 1000,
            "echoscu_p50_ms": statistics.median(s["echoscu_ms"]) * 1000,
            "findscu_alone_p50_ms": statistics.median(alone) * 1000,
            "find_pynetdicom_p50_ms": statistics.median(s["find_pynetdicom_ms"]) * 1000,
            "echo_pynetdicom_p50_ms": statistics.median(s["echo_pynetdicom_ms"]) * 1000,
            "find_matches": matches[name],
        }
    return results


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
    parser.add_argument("--rounds", type=int, default=4, help="C-STORE rounds (at most 5)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="the src/ folder of another nubis tree (e.g. `git archive` of an older commit),"
        " measured in the same run as target 'baseline'",
    )
    args = parser.parse_args()
    # Inherited by Orthanc and the dcmtk tools: see the module docstring.
    os.environ["TCP_NODELAY"] = "1"
    names = args.targets.split(",") + (["baseline"] if args.baseline else [])
    results = run(names, args)
    nan = float("nan")
    print(f"\n{orthanc_version()}")
    base = "baseline" in results
    print(f"{'figure':50} {'orthanc':>10}{' baseline' if base else ''} {'nubis':>10} {'ratio':>7}")
    for label, key, higher_better in ROWS:
        o = results.get("orthanc", {}).get(key)
        n = results.get("nubis", {}).get(key)
        b = f" {results['baseline'].get(key, nan):8.1f}" if base else ""
        ratio = (n / o if higher_better else o / n) if o and n else nan
        print(f"{label:50} {o or nan:10.1f}{b} {n or nan:10.1f} {ratio:6.2f}x")
    for name in names:
        r = results[name]
        print(
            f"{name}: C-STORE rounds {r['store_1_assoc_rounds']} / {r['store_4_assoc_rounds']},"
            f" {r['find_matches']} C-FIND matches"
        )
    print("\nCPU seconds per phase (server by target, client, other) and load average:")
    for key, runs in results["phases"].items():
        for p in runs:
            servers = ", ".join(f"{k} {v:.2f}" for k, v in p["server_cpu_s"].items())
            print(
                f"  {key:24} wall {p['wall_s']:6.2f}  server {servers}  client"
                f" {p['client_cpu_s']:.2f}  other {p['other_cpu_s']:.2f}"
                f"  load {p['loadavg_1m_before']:.2f}{'  NOISY' if p['noisy'] else ''}"
            )
    out = RESULTS / f"dimse-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {out}")


if __name__ == "__main__":
    main()
