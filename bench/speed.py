"""Issue 11's speed targets, nubis and Orthanc side by side in one run, taking turns.

Usage:  .venv/bin/python bench/speed.py [--quick] [--rounds N] [--targets orthanc,nubis]
                                        [--only stow_8x50,instance,...] [--nubis-arg ARG]

Workloads (the issue's table; ``--quick`` shrinks the counts for a try-out):

- ``stow_8x50`` / ``stow_8x1`` / ``stow_1x1``: STOW-RS of 1,000 CT instances of 0.5 MB, by 8
  clients with 50 instances per request, 8 clients with one each, one client with one each;
- ``stow_small``: 20,000 CT instances of about 10 KB (64 x 64), 4 clients x 50 per request;
- ``instance`` / ``frame``: WADO-RS of one whole instance (as stored) and of frame 1 of a
  single-frame instance, sequential GETs on one keep-alive connection, p50;
- ``retrieval``: WADO-RS of a 200-instance study (as stored), one client, MB/s;
- ``cstore_1`` / ``cstore_4``: dcmtk storescu, 200 instances on one association and 4 x 50;
- ``cfind``: one findscu process per query, study level by PatientID over 2,000 studies, p50
  (with findscu alone against a refused port: the client's own floor).

Both servers run at once, on 127.0.0.1, on their shipped defaults (nubis: authentication,
audit trail, encryption at rest, fsync before each acknowledgement), with ``TCP_NODELAY=1``
in every process's environment (Debian's dcmtk otherwise leaves Nagle on). Each workload is
measured for one target then the other, who goes first alternating from workload to
workload and round to round (the machine is shared: taking turns puts both under the same
conditions); single-request latencies alternate request by request. Every ingest uses
instances neither server has seen: the corpus's Study, Series and SOP Instance UIDs are
rewritten (same length, so the bytes stay valid) for each target, round and workload. Every
phase records wall time, each server's CPU seconds (its process tree), the client's and the
rest of the machine's; "server CPU per instance stored" comes from the ingest phases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from dimse import (  # noqa: E402
    OrthancDimse,
    _client_cpu,
    findscu_args,
    store_rate,
    timed_process,
)
from nubis.tools import synth  # noqa: E402
from orthanc import free_port, orthanc_version  # noqa: E402
from run import (  # noqa: E402
    ACCEPT_DICOM,
    ACCEPT_FRAME,
    CORPUS_DIR,
    RESULTS_DIR,
    NubisServer,
    _boundary_of,
    _cached,
    _count_parts,
    load_untimed,
    machine_busy_cpu,
    multipart_body,
    new_client,
    percentiles,
    process_tree_cpu,
    stow,
)

OTHER_CPU_FLAG = 0.25  # cores of other work during a phase above which it is flagged
STUDY_SIZE = 200


@dataclass(frozen=True)
class Plan:
    ct_instances: int = 1000
    small_instances: int = 20000
    latency_requests: int = 300
    retrieval_repeats: int = 5
    cstore_instances: int = 200
    find_requests: int = 100
    qido_studies: int = 2000


QUICK = Plan(
    ct_instances=200,
    small_instances=2000,
    latency_requests=100,
    retrieval_repeats=3,
    cstore_instances=100,
    find_requests=30,
)

WORKLOADS = (
    "stow_8x50",
    "stow_8x1",
    "stow_1x1",
    "stow_small",
    "retrieval",
    "instance",
    "frame",
    "transcode",
    "cstore_1",
    "cstore_4",
    "cfind",
)


# --------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Instance:
    """A corpus file in memory with the UIDs a fresh copy rewrites."""

    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str


def _load(paths: Sequence[Path]) -> list[Instance]:
    out = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(
            Instance(
                path.read_bytes(),
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                str(ds.SOPInstanceUID),
                str(ds.PatientID),
            )
        )
    return out


def ct_corpus(n: int, *, rows: int, columns: int, name: str) -> list[Path]:
    n_studies = -(-n // STUDY_SIZE)

    def build(d: Path) -> None:
        for i in range(n_studies):
            synth.make_ct_series(
                d / f"study{i:03d}",
                n_instances=min(STUDY_SIZE, n - i * STUDY_SIZE),
                rows=rows,
                columns=columns,
                patient=synth.PatientSpec(f"SPEED{i:03d}", f"Speed^Patient{i}", "19650412", "M"),
                accession=f"SPEEDACC{i:03d}",
                seed=5000 + i,
            )

    folder = _cached(CORPUS_DIR / f"{name}-{n}", {"n": n, "rows": rows, "columns": columns}, build)
    return sorted(folder.rglob("*.dcm"))


def _fresh_uid(uid: str, salt: str) -> str:
    """Another valid UID of the same length (the last component replaced), fixed by salt."""
    root, _, last = uid.rpartition(".")
    digits = str(int.from_bytes(hashlib.sha256(f"{salt}/{uid}".encode()).digest(), "big"))
    new_last = ("1" + digits)[: len(last)] if len(last) > 1 else str(1 + int(digits[0]) % 9)
    return f"{root}.{new_last}"


def fresh(instances: Sequence[Instance], salt: str) -> list[bytes]:
    """The instances as new objects: Study, Series and SOP Instance UIDs rewritten."""
    out = []
    for inst in instances:
        data = inst.data
        for uid in (inst.study_uid, inst.series_uid, inst.sop_uid):
            data = data.replace(uid.encode(), _fresh_uid(uid, salt).encode())
        out.append(data)
    return out


# --------------------------------------------------------------------------- measuring


@contextmanager
def phase(
    key: str, target: str, pids: dict[str, int], record: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """Wall time and CPU seconds (each server, the client, other work) of one phase."""
    load = os.getloadavg()[0]
    out: dict[str, Any] = {}
    wall, client, machine = time.perf_counter(), _client_cpu(), machine_busy_cpu()
    servers = {name: process_tree_cpu(pid) for name, pid in pids.items()}
    yield out
    wall = time.perf_counter() - wall
    servers = {name: process_tree_cpu(pid) - servers[name] for name, pid in pids.items()}
    client = _client_cpu() - client
    other = max(0.0, machine_busy_cpu() - machine - sum(servers.values()) - client)
    out.update(
        wall_s=round(wall, 3),
        server_cpu_s=round(servers.get(target, 0.0), 3),
        idle_server_cpu_s={k: round(v, 3) for k, v in servers.items() if k != target},
        client_cpu_s=round(client, 3),
        other_cpu_s=round(other, 3),
        loadavg_1m_before=round(load, 2),
        noisy=other / wall > OTHER_CPU_FLAG,
    )
    record.setdefault(key, {}).setdefault(target, []).append(out)


def stow_phase(base: str, payloads: list[bytes], clients: int, per_request: int) -> float:
    """Instances per second of STOW-RS ``payloads`` by ``clients`` connections."""
    bodies = [
        (*multipart_body(payloads[i : i + per_request]), len(payloads[i : i + per_request]))
        for i in range(0, len(payloads), per_request)
    ]
    work = iter(bodies)
    lock = threading.Lock()
    errors: list[str] = []
    stored = [0]
    gate = threading.Barrier(clients + 1)

    def worker() -> None:
        with new_client(base) as client:
            gate.wait()
            while True:
                with lock:
                    item = next(work, None)
                if item is None:
                    return
                try:
                    ok, failed = stow(client, item[0], item[1])
                except Exception as exc:
                    errors.append(str(exc))
                    return
                with lock:
                    stored[0] += ok
                    if failed:
                        errors.append(f"{failed} instance(s) refused")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    gate.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors or stored[0] != len(payloads):
        raise RuntimeError(f"STOW: {stored[0]} of {len(payloads)} stored; {errors[:3]}")
    return len(payloads) / elapsed


def retrieval_phase(base: str, study_uid: str, expected: int, repeats: int) -> float:
    """MB/s of whole-study WADO-RS, one client, after one warm-up."""
    total_bytes, total_s = 0, 0.0
    with new_client(base) as client:
        for i in range(repeats + 1):
            start = time.perf_counter()
            with client.stream(
                "GET", f"/studies/{study_uid}", headers={"Accept": ACCEPT_DICOM}
            ) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"WADO-RS study: HTTP {r.status_code}")
                nbytes, parts = _count_parts(
                    r.iter_raw(1 << 20), _boundary_of(r.headers["content-type"])
                )
            elapsed = time.perf_counter() - start
            if parts != expected:
                raise RuntimeError(f"WADO-RS study: {parts} parts, expected {expected}")
            if i:
                total_bytes += nbytes
                total_s += elapsed
    return total_bytes / total_s / 1e6


# --------------------------------------------------------------------------- targets


class NubisTarget(NubisServer):
    """``nubis serve`` with its DICOM port open too."""

    def __init__(self, extra_args: Sequence[str], log_dir: Path) -> None:
        self.dicom_port = free_port()
        super().__init__(
            str(BENCH_DIR.parent / ".venv/bin/nubis"),
            ["--dimse-port", str(self.dicom_port), "--set", "log_level=warning", *extra_args],
            log_dir,
        )


@dataclass
class Target:
    name: str
    server: Any
    aec: str

    @property
    def base(self) -> str:
        return str(self.server.dicomweb_url)

    @property
    def port(self) -> int:
        return int(self.server.dicom_port)

    @property
    def pid(self) -> int:
        return int(self.server.proc.pid)


def _turns(targets: list[Target], i: int) -> list[Target]:
    k = i % len(targets)
    return targets[k:] + targets[:k]


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace, plan: Plan, log: Callable[[str], None]) -> dict[str, Any]:
    wanted = [w for w in WORKLOADS if w in args.only] if args.only else list(WORKLOADS)
    t0 = time.perf_counter()
    ct = _load(ct_corpus(plan.ct_instances, rows=512, columns=512, name="speed-ct"))
    small = (
        _load(ct_corpus(plan.small_instances, rows=64, columns=64, name="speed-small"))
        if "stow_small" in wanted
        else []
    )
    qido_paths: list[Path] = []
    if "cfind" in wanted:
        qido_dir = _cached(
            CORPUS_DIR / f"qido-{plan.qido_studies}",
            {"studies": plan.qido_studies},
            lambda d: synth.make_corpus(d, n_studies=plan.qido_studies, seed=3),
        )
        qido_paths = sorted(qido_dir.rglob("*.dcm"))
    log(f"corpus ready in {time.perf_counter() - t0:.0f} s")

    log_dir = RESULTS_DIR / "logs" / time.strftime("speed-%Y%m%d-%H%M%S")
    targets: list[Target] = []
    phases: dict[str, Any] = {}
    figures: dict[str, dict[str, list[float]]] = {}
    try:
        for name in args.targets.split(","):
            if name == "orthanc":
                server: Any = OrthancDimse(log_dir=log_dir)
                server.start()
                targets.append(Target(name, server, "ORTHANC"))
            else:
                server = NubisTarget(args.nubis_arg, log_dir)
                server.start()
                targets.append(Target(name, server, "NUBIS"))
        pids = {t.name: t.pid for t in targets}
        log("servers ready: " + ", ".join(t.name for t in targets))

        def add(key: str, target: str, value: float) -> None:
            figures.setdefault(key, {}).setdefault(target, []).append(value)

        # The study every read workload reads, stored untimed by each target.
        read_study = fresh(ct[:STUDY_SIZE], "reads")
        first = pydicom.dcmread(_as_file(read_study[0]), stop_before_pixels=True)
        study_uid, series_uid = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
        sops = [
            str(pydicom.dcmread(_as_file(d), stop_before_pixels=True).SOPInstanceUID)
            for d in read_study
        ]
        if {"retrieval", "instance", "frame"} & set(wanted):
            for t in targets:
                with new_client(t.base) as client:
                    for i in range(0, len(read_study), 50):
                        stow(client, *multipart_body(read_study[i : i + 50]))
        lossless = jpeg_lossless(ct[0]) if "transcode" in wanted else None
        if lossless is not None:
            for t in targets:
                with new_client(t.base) as client:
                    stow(client, *multipart_body([lossless.data]))
        if "cfind" in wanted:
            for t in targets:
                load_untimed(t.base, qido_paths)
        log("read study and C-FIND corpus loaded (untimed)")

        turn = 0
        for r in range(args.rounds):
            for workload in wanted:
                for t in _turns(targets, turn):
                    value = _measure(workload, t, targets, r, plan, ct, small, pids, phases,
                                     study_uid, series_uid, sops, add)  # fmt: skip
                    if value is not None:
                        log(f"round {r + 1} {workload:10} {t.name:8} {value}")
                turn += 1
            if "instance" in wanted or "frame" in wanted or "cfind" in wanted:
                _latencies(wanted, targets, plan, study_uid, series_uid, sops, pids, phases,
                           add, r, log)  # fmt: skip
            if lossless is not None:
                _transcode_latency(targets, plan, lossless, pids, phases, add, r, log)
    finally:
        for t in targets:
            t.server.stop()
    return {"figures": figures, "phases": phases}


def _as_file(data: bytes) -> Any:
    import io

    return io.BytesIO(data)


def _measure(
    workload: str,
    t: Target,
    targets: list[Target],
    r: int,
    plan: Plan,
    ct: list[Instance],
    small: list[Instance],
    pids: dict[str, int],
    phases: dict[str, Any],
    study_uid: str,
    series_uid: str,
    sops: list[str],
    add: Callable[[str, str, float], None],
) -> str | None:
    """One throughput workload for one target; latency workloads run in _latencies."""
    salt = f"{t.name}/{r}/{workload}"
    if workload.startswith("stow_"):
        clients, per_request, corpus = {
            "stow_8x50": (8, 50, ct),
            "stow_8x1": (8, 1, ct),
            "stow_1x1": (1, 1, ct),
            "stow_small": (4, 50, small),
        }[workload]
        payloads = fresh(corpus, salt)
        with phase(workload, t.name, pids, phases) as p:
            rate = stow_phase(t.base, payloads, clients, per_request)
        cpu_ms = p["server_cpu_s"] / len(payloads) * 1000
        add(workload, t.name, rate)
        add(workload + "_cpu_ms", t.name, cpu_ms)
        return f"{rate:7.1f} inst/s, server CPU {cpu_ms:.2f} ms/inst"
    if workload.startswith("cstore_"):
        associations = int(workload.split("_")[1])
        payloads = fresh(ct[: plan.cstore_instances], salt)
        with tempfile.TemporaryDirectory(prefix="speed-cstore-") as folder:
            files = []
            for i, data in enumerate(payloads):
                path = Path(folder) / f"{i:05d}.dcm"
                path.write_bytes(data)
                files.append(path)
            with phase(workload, t.name, pids, phases) as p:
                rate = store_rate(t.port, t.aec, files, associations)
        cpu_ms = p["server_cpu_s"] / len(payloads) * 1000
        add(workload, t.name, rate)
        add(workload + "_cpu_ms", t.name, cpu_ms)
        return f"{rate:7.1f} inst/s, server CPU {cpu_ms:.2f} ms/inst"
    if workload == "retrieval":
        with phase(workload, t.name, pids, phases) as p:
            rate = retrieval_phase(t.base, study_uid, len(sops), plan.retrieval_repeats)
        add(workload, t.name, rate)
        return f"{rate:7.1f} MB/s, server CPU {p['server_cpu_s']:.2f} s"
    return None


def _latencies(
    wanted: list[str],
    targets: list[Target],
    plan: Plan,
    study_uid: str,
    series_uid: str,
    sops: list[str],
    pids: dict[str, int],
    phases: dict[str, Any],
    add: Callable[[str, str, float], None],
    r: int,
    log: Callable[[str], None],
) -> None:
    """Single-request latencies, the targets alternating request by request."""
    rng = random.Random(11 + r)
    prefix = f"/studies/{study_uid}/series/{series_uid}/instances/"
    for workload, accept in (("instance", ACCEPT_DICOM), ("frame", ACCEPT_FRAME)):
        if workload not in wanted:
            continue
        urls = [
            prefix + rng.choice(sops) + ("/frames/1" if workload == "frame" else "")
            for _ in range(plan.latency_requests)
        ]
        samples: dict[str, list[float]] = {t.name: [] for t in targets}
        clients = {t.name: new_client(t.base) for t in targets}
        try:
            with phase(workload, "all", pids, phases):
                for i, url in enumerate([urls[0], *urls]):
                    for t in _turns(targets, i):
                        start = time.perf_counter()
                        response = clients[t.name].get(url, headers={"Accept": accept})
                        elapsed = time.perf_counter() - start
                        if response.status_code != 200 or len(response.content) < 500_000:
                            raise RuntimeError(
                                f"{workload} from {t.name}: HTTP {response.status_code}, "
                                f"{len(response.content)} bytes"
                            )
                        if i:  # the first request of each only opens its connection
                            samples[t.name].append(elapsed)
        finally:
            for client in clients.values():
                client.close()
        for name, values in samples.items():
            p50 = percentiles(values)["p50_ms"]
            add(workload, name, p50)
            log(f"round {r + 1} {workload:10} {name:8} p50 {p50:.2f} ms")
    if "cfind" in wanted:
        ids = synth.corpus_patient_ids(plan.qido_studies, seed=3)
        chosen = [rng.choice(ids) for _ in range(plan.find_requests)]
        refused = free_port()
        finds: dict[str, list[float]] = {t.name: [] for t in targets}
        alone: list[float] = []
        with phase("cfind", "all", pids, phases):
            for i, pid in enumerate(chosen):
                for t in _turns(targets, i):
                    finds[t.name].append(timed_process(findscu_args(t.port, t.aec, pid)))
                alone.append(timed_process(findscu_args(refused, "X", pid), refused=True))
        for name, values in finds.items():
            p50 = statistics.median(values) * 1000
            add("cfind", name, p50)
            log(f"round {r + 1} cfind      {name:8} p50 {p50:.1f} ms")
        add("findscu_alone", "client", statistics.median(alone) * 1000)


EXPLICIT_LE = "1.2.840.10008.1.2.1"
ACCEPT_EXPLICIT_LE = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LE}'


def jpeg_lossless(native: Instance) -> Instance:
    """A fresh copy of ``native`` (a CT slice) compressed by dcmtk's ``dcmcjpeg +e1`` (JPEG
    Lossless SV1, 1.2.840.10008.1.2.4.70), as modalities send."""
    with tempfile.TemporaryDirectory(prefix="speed-jpeg-") as folder:
        source, target = Path(folder) / "native.dcm", Path(folder) / "lossless.dcm"
        source.write_bytes(fresh([native], "jpeg-lossless")[0])
        subprocess.run(["dcmcjpeg", "+e1", str(source), str(target)], check=True)
        return _load([target])[0]


def _transfer_syntax_of_part(body: bytes) -> str:
    start = body.find(b"DICM") - 128
    ds = pydicom.dcmread(_as_file(body[max(start, 0) :]), stop_before_pixels=True)
    return str(ds.file_meta.TransferSyntaxUID)


def _transcode_latency(
    targets: list[Target],
    plan: Plan,
    lossless: Instance,
    pids: dict[str, int],
    phases: dict[str, Any],
    add: Callable[[str, str, float], None],
    r: int,
    log: Callable[[str], None],
) -> None:
    """WADO-RS of the JPEG lossless instance asked for in Explicit VR Little Endian: each
    server decodes it per request. The targets alternate request by request."""
    url = (
        f"/studies/{lossless.study_uid}/series/{lossless.series_uid}"
        f"/instances/{lossless.sop_uid}"
    )
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    clients = {t.name: new_client(t.base) for t in targets}
    try:
        with phase("transcode", "all", pids, phases):
            for i in range(plan.latency_requests + 1):
                for t in _turns(targets, i):
                    start = time.perf_counter()
                    response = clients[t.name].get(url, headers={"Accept": ACCEPT_EXPLICIT_LE})
                    elapsed = time.perf_counter() - start
                    if (
                        response.status_code != 200
                        or _transfer_syntax_of_part(response.content) != EXPLICIT_LE
                    ):
                        raise RuntimeError(f"transcode from {t.name}: HTTP {response.status_code}")
                    if i:
                        samples[t.name].append(elapsed)
    finally:
        for client in clients.values():
            client.close()
    for name, values in samples.items():
        p50 = percentiles(values)["p50_ms"]
        add("transcode", name, p50)
        log(f"round {r + 1} transcode  {name:8} p50 {p50:.2f} ms")


# --------------------------------------------------------------------------- report


ROWS = (
    ("STOW-RS 8 clients x 50 (inst/s)", "stow_8x50", True, 1.5),
    ("STOW-RS 8 clients x 1 (inst/s)", "stow_8x1", True, None),
    ("STOW-RS 1 client x 1 (inst/s)", "stow_1x1", True, 1.2),
    ("STOW-RS 20,000 small, 4 x 50 (inst/s)", "stow_small", True, 1.0),
    ("WADO-RS study retrieval (MB/s)", "retrieval", True, 1.2),
    ("WADO-RS one instance p50 (ms)", "instance", False, 1.0),
    ("WADO-RS one frame, single-frame p50 (ms)", "frame", False, 1.0),
    ("WADO-RS JPEG lossless instance as Explicit VR LE p50 (ms)", "transcode", False, 1.0),
    ("C-STORE storescu 1 association (inst/s)", "cstore_1", True, 1.0),
    ("C-STORE storescu 4 associations (inst/s)", "cstore_4", True, 1.0),
    ("C-FIND study, findscu p50 (ms)", "cfind", False, 1.0),
    ("server CPU per instance, STOW 8 x 50 (ms)", "stow_8x50_cpu_ms", False, None),
    ("server CPU per instance, STOW 1 x 1 (ms)", "stow_1x1_cpu_ms", False, None),
    ("server CPU per instance, STOW small (ms)", "stow_small_cpu_ms", False, None),
    ("server CPU per instance, C-STORE 1 (ms)", "cstore_1_cpu_ms", False, None),
    ("server CPU per instance, C-STORE 4 (ms)", "cstore_4_cpu_ms", False, None),
)


def report(results: dict[str, Any]) -> str:
    figures = results["figures"]
    lines = [f"{'figure':44} {'Orthanc':>9} {'nubis':>9} {'ratio':>7} {'target':>7}  ok"]
    for label, key, higher_better, target in ROWS:
        per = figures.get(key, {})
        o = statistics.median(per["orthanc"]) if per.get("orthanc") else None
        n = statistics.median(per["nubis"]) if per.get("nubis") else None
        ratio = (n / o if higher_better else o / n) if o and n else None
        ok = "" if ratio is None or target is None else ("yes" if ratio >= target else "NO")
        lines.append(
            f"{label:44} {'' if o is None else f'{o:9.2f}':>9}"
            f" {'' if n is None else f'{n:9.2f}':>9}"
            f" {'' if ratio is None else f'{ratio:6.2f}x':>7}"
            f" {'' if target is None else f'>={target:g}x':>7}  {ok}"
        )
    alone = figures.get("findscu_alone", {}).get("client")
    if alone:
        lines.append(
            f"{'  findscu alone, port refused p50 (ms)':44} {statistics.median(alone):>9.2f}"
        )
    lines.append("")
    lines.append("rounds: " + "; ".join(
        f"{key} " + ", ".join(f"{n} {[round(v, 1) for v in vs]}" for n, vs in per.items())
        for key, per in figures.items()
    ))  # fmt: skip
    lines.append("")
    lines.append("phases (wall s, server CPU s, client CPU s, other CPU s, load):")
    for key, per in results["phases"].items():
        for name, runs in per.items():
            for p in runs:
                lines.append(
                    f"  {key:10} {name:8} wall {p['wall_s']:7.2f} server {p['server_cpu_s']:6.2f}"
                    f" {p['idle_server_cpu_s']} client {p['client_cpu_s']:6.2f}"
                    f" other {p['other_cpu_s']:6.2f} load {p['loadavg_1m_before']:.2f}"
                    + ("  NOISY" if p["noisy"] else "")
                )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a try-out")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--targets", default="orthanc,nubis")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma list of workloads: {','.join(WORKLOADS)}")  # fmt: skip
    parser.add_argument("--nubis-arg", action="append", default=[], help="extra serve argument")
    args = parser.parse_args(argv)
    if args.only and set(args.only) - set(WORKLOADS):
        parser.error(f"unknown workloads {sorted(set(args.only) - set(WORKLOADS))}")
    # Inherited by Orthanc and the dcmtk tools (see bench/dimse.py).
    os.environ["TCP_NODELAY"] = "1"
    plan = QUICK if args.quick else Plan()

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    started = time.perf_counter()
    results = run(args, plan, log)
    text = report(results)
    print(f"\n{orthanc_version()}; {os.cpu_count()} CPUs; {time.perf_counter() - started:.0f} s")
    print(f"command: {' '.join(sys.argv)}\n")
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"speed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"plan": plan.__dict__, "argv": sys.argv, **results}, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
