"""Side-by-side DICOMweb benchmark: Orthanc (Debian package + DICOMweb plugin) vs nubis.

Usage:  .venv/bin/python bench/run.py --quick|--full [--targets orthanc,nubis]

Every target is driven by the same client code against a DICOMweb base URL, on 127.0.0.1
only, each started fresh on empty storage and stopped at the end (also on error). See
bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(ROOT / "src"))

from nubis.tools import synth  # noqa: E402
from orthanc import OrthancServer, free_port, orthanc_version  # noqa: E402

RESULTS_DIR = BENCH_DIR / "results"
CORPUS_DIR = RESULTS_DIR / "corpus"

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
ACCEPT_JSON = "application/dicom+json"
STUDY_SIZE = 200  # instances per study in the STOW corpus; study 0 is the retrieval study


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Plan:
    mode: str
    stow_instances: int
    stow_clients: int = 8
    stow_batch: int = 50
    retrieval_repeats: int = 5
    metadata_requests: int = 30
    frame_requests: int = 60
    frames: int = 2000
    frame_rows: int = 256
    frame_columns: int = 256
    frame_ts: str = "explicit"
    qido_studies: int = 2000
    qido_requests: int = 200
    phase_budget_s: float = 300.0  # bound on any timed loop, whatever the server speed


PLANS = {
    "quick": Plan(
        mode="quick",
        stow_instances=400,
        retrieval_repeats=5,
        metadata_requests=15,
        frame_requests=30,
        qido_requests=100,
        phase_budget_s=120.0,
    ),
    "full": Plan(
        mode="full",
        stow_instances=2000,
        retrieval_repeats=10,
        metadata_requests=50,
        frame_requests=100,
        qido_requests=300,
    ),
}


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    stow_studies: list[list[Path]]
    multiframe: Path
    qido_paths: list[Path]
    qido_patient_ids: list[str]

    @property
    def stow_paths(self) -> list[Path]:
        return [p for study in self.stow_studies for p in study]


@functools.cache
def _synth_fingerprint() -> str:
    # A change to the generator invalidates cached corpora. Computed once per run so an
    # edit made while a run is generating cannot label old output with the new hash.
    # The pixel phantom lives beside it (nubis.tools.phantom).
    sources = (Path(synth.__file__), Path(synth.__file__).with_name("phantom.py"))
    return hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]


def _cached(dir_: Path, params: dict[str, Any], build: Callable[[Path], None]) -> Path:
    manifest = dir_ / "manifest.json"
    want = dict(params, synth=_synth_fingerprint())
    if manifest.exists() and json.loads(manifest.read_text()) == want:
        return dir_
    shutil.rmtree(dir_, ignore_errors=True)
    dir_.mkdir(parents=True)
    build(dir_)
    manifest.write_text(json.dumps(want, sort_keys=True))
    return dir_


def prepare_corpus(plan: Plan, log: Callable[[str], None]) -> Corpus:
    t0 = time.perf_counter()
    n_studies = -(-plan.stow_instances // STUDY_SIZE)

    def build_stow(d: Path) -> None:
        for i in range(n_studies):
            n = min(STUDY_SIZE, plan.stow_instances - i * STUDY_SIZE)
            synth.make_ct_series(
                d / f"study{i:03d}",
                n_instances=n,
                patient=synth.PatientSpec(f"BENCH{i:03d}", f"Bench^Patient{i}", "19650412", "M"),
                accession=f"BENCHACC{i:03d}",
                seed=1000 + i,
            )

    stow_dir = _cached(
        CORPUS_DIR / f"stow-{plan.stow_instances}", {"n": plan.stow_instances}, build_stow
    )
    studies = [sorted(d.glob("*.dcm")) for d in sorted(stow_dir.glob("study*"))]

    mf_params = {
        "frames": plan.frames,
        "rows": plan.frame_rows,
        "columns": plan.frame_columns,
        "ts": plan.frame_ts,
    }
    mf_dir = _cached(
        CORPUS_DIR / f"multiframe-{plan.frames}-{plan.frame_ts}",
        mf_params,
        lambda d: synth.make_multiframe(
            d / "mf.dcm",
            frames=plan.frames,
            rows=plan.frame_rows,
            columns=plan.frame_columns,
            transfer_syntax=synth._ts_from_name(plan.frame_ts),
            seed=7,
        ),
    )

    qido_dir = _cached(
        CORPUS_DIR / f"qido-{plan.qido_studies}",
        {"studies": plan.qido_studies},
        lambda d: synth.make_corpus(d, n_studies=plan.qido_studies, seed=3),
    )
    log(f"corpus ready in {time.perf_counter() - t0:.1f}s under {CORPUS_DIR}")
    return Corpus(
        stow_studies=studies,
        multiframe=mf_dir / "mf.dcm",
        qido_paths=sorted(qido_dir.rglob("*.dcm")),
        qido_patient_ids=synth.corpus_patient_ids(plan.qido_studies, seed=3),
    )


# --------------------------------------------------------------------------- client


# nubis requires authentication by default; Orthanc (auth off) ignores the header.
BENCH_TOKEN = "nubis-bench-admin-token-0123456789abcdef"


def new_client(base_url: str) -> httpx.Client:
    # One keep-alive connection per thread. Accept-Encoding identity: the figures measure
    # the archive, not gzip; both targets are asked the same.
    return httpx.Client(
        base_url=base_url,
        timeout=httpx.Timeout(600.0, connect=10.0),
        headers={"Accept-Encoding": "identity", "Authorization": f"Bearer {BENCH_TOKEN}"},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
    )


def multipart_body(payloads: Sequence[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    b = boundary.encode()
    chunks: list[bytes] = []
    for payload in payloads:
        chunks += [b"--", b, b"\r\nContent-Type: application/dicom\r\n\r\n", payload, b"\r\n"]
    chunks += [b"--", b, b"--\r\n"]
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return b"".join(chunks), content_type


def _stow_stored_count(response: httpx.Response) -> tuple[int, int]:
    """(stored, failed) counts from a STOW-RS response body."""
    if not response.content:
        return 0, 0
    doc = response.json()
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    stored = len(doc.get("00081199", {}).get("Value", []) or [])
    failed = len(doc.get("00081198", {}).get("Value", []) or [])
    return stored, failed


def stow(client: httpx.Client, body: bytes, content_type: str) -> tuple[int, int]:
    r = client.post(
        "/studies", content=body, headers={"Content-Type": content_type, "Accept": ACCEPT_JSON}
    )
    if r.status_code not in (200, 202):
        raise RuntimeError(f"STOW failed: HTTP {r.status_code}: {r.text[:300]}")
    return _stow_stored_count(r)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(samples, dtype=float) * 1000.0
    return {
        "n": len(samples),
        "p50_ms": float(np.percentile(arr, 50)),
        "p95_ms": float(np.percentile(arr, 95)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
    }


# --------------------------------------------------------------------------- phases


def stow_bodies(plan: Plan, paths: Sequence[Path]) -> list[tuple[bytes, str, int]]:
    """multipart/related bodies of ``plan.stow_batch`` instances: (body, content type, n)."""
    batches = [paths[i : i + plan.stow_batch] for i in range(0, len(paths), plan.stow_batch)]
    return [(*multipart_body([p.read_bytes() for p in batch]), len(batch)) for batch in batches]


def process_tree_cpu(pid: int) -> float:
    """User+system CPU seconds of ``pid`` and its live descendants (e.g. worker processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces; fields after the closing ')' are fixed.
        fields = raw[raw.rindex(")") + 2 :].split()
        ppid = int(fields[1])
        cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
        stats[int(entry.name)] = (ppid, cpu)
    tree = {pid}
    changed = True
    while changed:
        changed = False
        for p, (ppid, _) in stats.items():
            if ppid in tree and p not in tree:
                tree.add(p)
                changed = True
    return sum(stats[p][1] for p in tree if p in stats)


def machine_busy_cpu() -> float:
    """Non-idle CPU seconds of the whole machine since boot (all cores), from /proc/stat."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def bench_stow(base: str, plan: Plan, bodies: Sequence[tuple[bytes, str, int]]) -> dict[str, Any]:
    """8 concurrent clients POSTing multipart/related batches of 50 CT instances.

    Bodies are built before the clock starts so the figure is the server's ingest rate.
    """
    n_instances = sum(item[2] for item in bodies)
    total_bytes = sum(len(b[0]) for b in bodies)
    work: queue.Queue[tuple[bytes, str, int]] = queue.Queue()
    for item in bodies:
        work.put(item)
    latencies: list[float] = []
    stored = failed = 0
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(plan.stow_clients + 1)

    def worker() -> None:
        nonlocal stored, failed
        with new_client(base) as client:
            start_gate.wait()
            while True:
                try:
                    body, ctype, _n = work.get_nowait()
                except queue.Empty:
                    return
                t = time.perf_counter()
                try:
                    s, f = stow(client, body, ctype)
                except Exception as exc:
                    with lock:
                        errors.append(str(exc))
                    continue
                dt_ = time.perf_counter() - t
                with lock:
                    latencies.append(dt_)
                    stored += s
                    failed += f

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(plan.stow_clients)]
    for th in threads:
        th.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join(timeout=plan.phase_budget_s * 3)
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} STOW requests failed, first: {errors[0]}")
    return {
        "instances": n_instances,
        "requests": len(bodies),
        "stored_reported": stored,
        "failed_reported": failed,
        "seconds": elapsed,
        "instances_per_s": n_instances / elapsed,
        "mb_per_s": total_bytes / elapsed / 1e6,
        "request_latency": percentiles(latencies),
    }


def load_untimed(base: str, paths: Sequence[Path], batch: int = 100, clients: int = 4) -> None:
    """Set-up uploads that are not measured (QIDO corpus, multi-frame object)."""
    batches = [paths[i : i + batch] for i in range(0, len(paths), batch)]
    local = threading.local()

    def send(chunk: Sequence[Path]) -> None:
        if not hasattr(local, "client"):
            local.client = new_client(base)
        body, ctype = multipart_body([p.read_bytes() for p in chunk])
        stow(local.client, body, ctype)

    pool = ThreadPoolExecutor(clients)
    try:
        list(pool.map(send, batches))
    finally:
        # On an error or SIGTERM, drop the queued uploads instead of sending them all
        # before the server can be stopped.
        pool.shutdown(wait=True, cancel_futures=True)


def _count_parts(stream: Iterator[bytes], boundary: bytes) -> tuple[int, int]:
    """(bytes received, multipart parts seen) without holding the body in memory."""
    marker = b"--" + boundary
    total = 0
    occurrences = 0
    tail = b""
    for chunk in stream:
        total += len(chunk)
        window = tail + chunk
        occurrences += window.count(marker)
        # Keep one byte less than a marker: enough to catch a marker split across chunks,
        # too little to hold (and so count twice) a complete one.
        tail = window[-(len(marker) - 1) :]
    # n parts are delimited by n boundaries plus the closing one.
    return total, max(occurrences - 1, 0)


def _boundary_of(content_type: str) -> bytes:
    for param in content_type.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip('"').encode()
    raise RuntimeError(f"no boundary in {content_type!r}")


def bench_retrieval(base: str, plan: Plan, study_uid: str, expected: int) -> dict[str, Any]:
    """WADO-RS whole-study retrieval, one client, sequential repeats after one warm-up."""
    runs: list[dict[str, float]] = []
    deadline = time.monotonic() + plan.phase_budget_s
    with new_client(base) as client:
        for i in range(plan.retrieval_repeats + 1):
            t = time.perf_counter()
            with client.stream(
                "GET", f"/studies/{study_uid}", headers={"Accept": ACCEPT_DICOM}
            ) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"WADO-RS failed: HTTP {r.status_code}")
                boundary = _boundary_of(r.headers["content-type"])
                nbytes, parts = _count_parts(r.iter_raw(1 << 20), boundary)
            elapsed = time.perf_counter() - t
            if parts != expected:
                raise RuntimeError(f"WADO-RS returned {parts} parts, expected {expected}")
            if i > 0:  # the first pass only warms caches
                runs.append(
                    {"seconds": elapsed, "bytes": nbytes, "mb_per_s": nbytes / elapsed / 1e6}
                )
            if time.monotonic() > deadline and runs:
                break
    total_bytes = sum(r["bytes"] for r in runs)
    total_s = sum(r["seconds"] for r in runs)
    return {
        "repeats": len(runs),
        "instances": expected,
        "bytes_per_retrieval": runs[0]["bytes"],
        "mb_per_s": total_bytes / total_s / 1e6,
        "best_mb_per_s": max(r["mb_per_s"] for r in runs),
        "retrieval_latency": percentiles([r["seconds"] for r in runs]),
    }


def _timed_gets(
    base: str,
    urls: Sequence[str],
    accept: str,
    budget_s: float,
    check: Callable[[httpx.Response], None],
) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.monotonic() + budget_s
    with new_client(base) as client:
        # One untimed request so connection set-up is not in the first sample.
        check(client.get(urls[0], headers={"Accept": accept}))
        for url in urls:
            t = time.perf_counter()
            r = client.get(url, headers={"Accept": accept})
            latencies.append(time.perf_counter() - t)
            check(r)
            if time.monotonic() > deadline:
                break
    return percentiles(latencies)


def bench_metadata(
    base: str, plan: Plan, study_uid: str, series_uid: str, expected: int
) -> dict[str, Any]:
    def check(r: httpx.Response) -> None:
        if r.status_code != 200:
            raise RuntimeError(f"metadata failed: HTTP {r.status_code}: {r.text[:200]}")
        n = len(r.json())
        if n != expected:
            raise RuntimeError(f"metadata returned {n} instances, expected {expected}")

    n = plan.metadata_requests
    series = _timed_gets(
        base,
        [f"/studies/{study_uid}/series/{series_uid}/metadata"] * n,
        ACCEPT_JSON,
        plan.phase_budget_s / 2,
        check,
    )
    study = _timed_gets(
        base, [f"/studies/{study_uid}/metadata"] * n, ACCEPT_JSON, plan.phase_budget_s / 2, check
    )
    return {"instances": expected, "series": series, "study": study}


def bench_frames(base: str, plan: Plan, mf: pydicom.Dataset) -> dict[str, Any]:
    rng = random.Random(11)
    numbers = [rng.randint(1, int(mf.NumberOfFrames)) for _ in range(plan.frame_requests)]
    url = (
        f"/studies/{mf.StudyInstanceUID}/series/{mf.SeriesInstanceUID}"
        f"/instances/{mf.SOPInstanceUID}/frames/"
    )
    min_bytes = int(mf.Rows) * int(mf.Columns) * 2 if plan.frame_ts == "explicit" else 1

    def check(r: httpx.Response) -> None:
        if r.status_code != 200:
            raise RuntimeError(f"frame retrieval failed: HTTP {r.status_code}: {r.text[:200]}")
        if len(r.content) < min_bytes:
            raise RuntimeError(f"frame response too small: {len(r.content)} bytes")

    out = _timed_gets(
        base, [url + str(n) for n in numbers], ACCEPT_FRAME, plan.phase_budget_s, check
    )
    out["frames_in_object"] = int(mf.NumberOfFrames)
    return out


def bench_qido(base: str, plan: Plan, patient_ids: Sequence[str]) -> dict[str, Any]:
    expected: dict[str, int] = {}
    for pid in patient_ids:
        expected[pid] = expected.get(pid, 0) + 1
    rng = random.Random(5)
    chosen = [rng.choice(patient_ids) for _ in range(plan.qido_requests)]
    urls = [f"/studies?PatientID={pid}" for pid in chosen]
    wrong: list[str] = []

    def check(r: httpx.Response) -> None:
        if r.status_code != 200:
            raise RuntimeError(f"QIDO failed: HTTP {r.status_code}: {r.text[:200]}")
        pid = str(r.request.url.params["PatientID"])
        if len(r.json()) != expected[pid]:
            wrong.append(pid)

    out = _timed_gets(base, urls, ACCEPT_JSON, plan.phase_budget_s, check)
    out["corpus_studies"] = len(patient_ids)
    out["wrong_result_counts"] = len(wrong)
    return out


# --------------------------------------------------------------------------- targets


class NubisServer:
    """nubis started as a subprocess: `<venv>/bin/nubis serve --data-dir D --http-port P`."""

    def __init__(
        self,
        command: str,
        extra_args: Sequence[str],
        log_dir: Path,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        self.http_port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-nubis-"))
        self.log_path = log_dir / "nubis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = "?"

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def start(self, timeout: float = 60.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        argv = [
            self.command, "serve", "--data-dir", str(self.workdir / "data"),
            "--http-port", str(self.http_port), *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NUBIS_ADMIN_TOKEN": BENCH_TOKEN, **self.env},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"nubis exited early (code {self.proc.returncode}); see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(
                    f"{self.dicomweb_url}/studies",
                    headers={"Accept": ACCEPT_JSON, "Authorization": f"Bearer {BENCH_TOKEN}"},
                    timeout=2.0,
                )
                if r.status_code in (200, 204):
                    return
            time.sleep(0.2)
        raise RuntimeError(f"nubis did not become ready within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
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


@dataclass
class TargetResult:
    name: str
    version: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


def run_target(
    server: Any, name: str, plan: Plan, corpus: Corpus, log: Callable[[str], None]
) -> TargetResult:
    result = TargetResult(name=name)
    t_start = time.perf_counter()
    try:
        server.start()
        result.version = str(getattr(server, "version", "?"))
        result.settings = dict(getattr(server, "config", {}) or {})
        base = server.dicomweb_url
        log(f"[{name}] ready at {base}")

        pid = server.proc.pid

        def phase(key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            # CPU used by the server and by this client during the phase: on a 2-core box
            # shared with the client, it tells whether a figure is server- or client-bound.
            load = os.getloadavg()[0]
            m0 = machine_busy_cpu()
            s0, c0, w0 = process_tree_cpu(pid), time.process_time(), time.perf_counter()
            out = fn()
            wall = time.perf_counter() - w0
            server_cpu = process_tree_cpu(pid) - s0
            client_cpu = time.process_time() - c0
            out["resources"] = {
                "wall_s": wall,
                "server_cpu_s": server_cpu,
                "client_cpu_s": client_cpu,
                # CPU that neither the server nor this client used: other work on the box.
                "other_cpu_s": max(machine_busy_cpu() - m0 - server_cpu - client_cpu, 0.0),
                "loadavg_1m_before": load,
            }
            result.figures[key] = out
            return out

        bodies = stow_bodies(plan, corpus.stow_paths)
        stow_fig = phase("stow", lambda: bench_stow(base, plan, bodies))
        bodies.clear()  # ~1 GB in --full; not needed past this phase
        log(f"[{name}] STOW {stow_fig['instances_per_s']:.0f} inst/s")

        t = time.perf_counter()
        load_untimed(base, [corpus.multiframe], batch=1, clients=1)
        load_untimed(base, corpus.qido_paths)
        log(f"[{name}] loaded multi-frame + {len(corpus.qido_paths)} QIDO studies "
            f"in {time.perf_counter() - t:.1f}s (untimed)")  # fmt: skip

        study = corpus.stow_studies[0]
        first = pydicom.dcmread(study[0], stop_before_pixels=True)
        st_uid, se_uid = first.StudyInstanceUID, first.SeriesInstanceUID
        fig = phase("retrieval", lambda: bench_retrieval(base, plan, st_uid, len(study)))
        log(f"[{name}] retrieval {fig['mb_per_s']:.0f} MB/s")

        fig = phase("metadata", lambda: bench_metadata(base, plan, st_uid, se_uid, len(study)))
        log(f"[{name}] series/study metadata p50 "
            f"{fig['series']['p50_ms']:.1f}/{fig['study']['p50_ms']:.1f} ms")  # fmt: skip

        mf = pydicom.dcmread(corpus.multiframe, stop_before_pixels=True)
        fig = phase("frame", lambda: bench_frames(base, plan, mf))
        log(f"[{name}] frame p50 {fig['p50_ms']:.1f} ms")

        fig = phase("qido", lambda: bench_qido(base, plan, corpus.qido_patient_ids))
        log(f"[{name}] QIDO p50 {fig['p50_ms']:.1f} ms")
    except Exception as exc:  # a target that fails still lets the others report
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"[{name}] ERROR {result.error}")
    finally:
        server.stop()
        result.seconds = time.perf_counter() - t_start
    return result


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Row:
    label: str
    path: tuple[str, ...]
    higher_is_better: bool
    target: float | None
    unit: str


ROWS = (
    Row("STOW-RS ingest (inst/s)", ("stow", "instances_per_s"), True, 1.5, "inst/s"),
    Row("STOW-RS ingest (MB/s)", ("stow", "mb_per_s"), True, None, "MB/s"),
    Row("WADO-RS study retrieval (MB/s)", ("retrieval", "mb_per_s"), True, 1.2, "MB/s"),
    Row("Series metadata p50 (ms)", ("metadata", "series", "p50_ms"), False, 5.0, "ms"),
    Row("Series metadata p95 (ms)", ("metadata", "series", "p95_ms"), False, 5.0, "ms"),
    Row("Study metadata p50 (ms)", ("metadata", "study", "p50_ms"), False, 5.0, "ms"),
    Row("Study metadata p95 (ms)", ("metadata", "study", "p95_ms"), False, 5.0, "ms"),
    Row("Frame (2000-frame obj) p50 (ms)", ("frame", "p50_ms"), False, 20.0, "ms"),
    Row("Frame (2000-frame obj) p95 (ms)", ("frame", "p95_ms"), False, 20.0, "ms"),
    Row("QIDO studies?PatientID p50 (ms)", ("qido", "p50_ms"), False, 2.0, "ms"),
    Row("QIDO studies?PatientID p95 (ms)", ("qido", "p95_ms"), False, 2.0, "ms"),
)


def _lookup(figures: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = figures
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return float(node)


def build_table(results: dict[str, TargetResult]) -> tuple[str, list[dict[str, Any]]]:
    orthanc = results.get("orthanc")
    nubis = results.get("nubis")
    rows_out: list[dict[str, Any]] = []
    header = f"{'figure':34} {'Orthanc':>10} {'nubis':>10} {'ratio':>8} {'target':>8}  ok"
    lines = [header, "-" * len(header)]
    for row in ROWS:
        o = _lookup(orthanc.figures, row.path) if orthanc else None
        n = _lookup(nubis.figures, row.path) if nubis else None
        ratio = None
        if o and n:
            # Oriented so that > 1 always means nubis is better.
            ratio = n / o if row.higher_is_better else o / n
        ok = None if ratio is None or row.target is None else ratio >= row.target
        rows_out.append({
            "figure": row.label, "orthanc": o, "nubis": n, "ratio": ratio,
            "target": row.target, "meets_target": ok,
        })  # fmt: skip

        def fmt(v: float | None) -> str:
            return "n/a" if v is None else f"{v:.1f}"

        lines.append(
            f"{row.label:34} {fmt(o):>10} {fmt(n):>10} "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x':>8} "
            f"{'' if row.target is None else f'>={row.target:g}x':>8}  "
            f"{'' if ok is None else ('yes' if ok else 'NO')}"
        )
    return "\n".join(lines), rows_out


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "httpx": httpx.__version__,
        # Other work on the machine skews figures; recorded so runs can be compared.
        "loadavg_at_start": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick")
    mode.add_argument("--full", action="store_const", dest="mode", const="full")
    parser.add_argument("--targets", default="orthanc,nubis", help="comma list: orthanc,nubis")
    parser.add_argument(
        "--nubis-command",
        default=str(Path(sys.executable).parent / "nubis"),
        help="nubis executable (default: the venv's)",
    )
    parser.add_argument("--nubis-arg", action="append", default=[], help="extra serve argument")
    parser.add_argument(
        "--frame-ts", choices=("explicit", "j2k", "rle"), default="explicit",
        help="transfer syntax of the 2,000-frame object",
    )  # fmt: skip
    args = parser.parse_args(argv)
    plan = PLANS[args.mode or "quick"]
    if args.frame_ts != plan.frame_ts:
        plan = Plan(**{**asdict(plan), "frame_ts": args.frame_ts})
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - {"orthanc", "nubis"}
    if unknown:
        parser.error(f"unknown targets: {sorted(unknown)}")

    # SIGTERM becomes an exception so every `finally` stops its server.
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS_DIR / "logs" / stamp

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    t0 = time.perf_counter()
    corpus = prepare_corpus(plan, log)
    corpus_s = time.perf_counter() - t0
    results: dict[str, TargetResult] = {}
    for name in targets:
        server: Any
        if name == "orthanc":
            server = OrthancServer(log_dir=log_dir)
        else:
            if not Path(args.nubis_command).exists() and shutil.which(args.nubis_command) is None:
                results[name] = TargetResult(name, error=f"{args.nubis_command} not found")
                log(f"[{name}] skipped: {args.nubis_command} not found")
                continue
            server = NubisServer(args.nubis_command, args.nubis_arg, log_dir)
        results[name] = run_target(server, name, plan, corpus, log)
        if name == "orthanc":
            results[name].version = orthanc_version()

    table, rows = build_table(results)
    print()
    print(f"mode={plan.mode}  stow={plan.stow_instances} inst  machine: {os.cpu_count()} CPUs")
    print(table)
    print(f"\nCPU seconds per phase ({os.cpu_count()} cores shared by client and server):")
    print(f"  {'target':8} {'phase':10} {'wall':>7} {'server':>7} {'client':>7} {'other':>7}")
    for r in results.values():
        for key, fig in r.figures.items():
            res = fig.get("resources", {})
            if res:
                # Other processes using more than a quarter of a core on average compete
                # with the server for CPU, so the figure understates it.
                busy = res["other_cpu_s"] > 0.25 * res["wall_s"]
                print(
                    f"  {r.name:8} {key:10} {res['wall_s']:7.1f} {res['server_cpu_s']:7.1f} "
                    f"{res['client_cpu_s']:7.1f} {res['other_cpu_s']:7.1f}"
                    + ("  <- other work on the machine: re-run when idle" if busy else "")
                )
        if r.error:
            print(f"{r.name}: ERROR {r.error}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"bench-{plan.mode}-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "when": stamp,
                "plan": asdict(plan),
                "machine": machine_info(),
                "corpus_seconds": corpus_s,
                "total_seconds": time.perf_counter() - t0,
                "targets": {k: asdict(v) for k, v in results.items()},
                "table": rows,
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nresults: {out}  (total {time.perf_counter() - t0:.0f}s)")
    return 0 if all(r.error is None for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
