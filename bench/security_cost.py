"""What security costs: nubis plain, encrypted, audited, and both (the default), side by side.

Usage:  .venv/bin/python bench/security_cost.py [--rounds 3] [--instances 400]

Four configurations of the same build, differing only in ``encrypt_at_rest`` and
``audit_trail``: plain (neither), encrypted, audited, secure (both, as nubis ships).
Authentication is the same in all four (the bench's admin token). Each round starts a fresh
nubis per configuration (the order rotates between rounds, so drift in the machine's load
favours none) and measures, with the client code of run.py: STOW-RS ingest (8 clients,
batches of 50 CT instances of 0.5 MB), WADO-RS retrieval of a 200-instance study,
single-frame latency on a 2,000-frame object, and
QIDO-RS by PatientID over 500 studies. Server CPU seconds per phase are recorded too: on a
shared 2-core machine they are the steadier measure of what the cipher and the audit chain
cost. The medians over rounds and each configuration's overhead against plain are printed
and written to bench/results/.

Every configuration checks what it serves: plain ones against the SHA-256 recorded at ingest
(``verify_reads``), encrypted ones by their AES-GCM tags, which replace that hash and cost
less CPU than it; so encrypted retrieval can come out faster than plain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import pydicom  # noqa: E402

import run  # noqa: E402  (bench/run.py: corpus, client and server helpers)

# configuration: (encrypt_at_rest, audit_trail)
MODES = {
    "plain": ("false", "false"),
    "encrypted": ("true", "false"),
    "audited": ("false", "true"),
    "secure": ("true", "true"),
}


def measure(
    mode: str, plan: run.Plan, corpus: run.Corpus, log: Callable[[str], None]
) -> dict[str, Any]:
    nubis = str(Path(sys.executable).with_name("nubis"))
    encrypt, audit = MODES[mode]
    server = run.NubisServer(
        nubis,
        ["--set", f"encrypt_at_rest={encrypt}", "--set", f"audit_trail={audit}",
         "--set", "log_level=warning"],
        run.RESULTS_DIR / "logs" / f"security-{mode}",
    )  # fmt: skip
    figures: dict[str, Any] = {}
    try:
        server.start()
        assert server.proc is not None
        pid, base = server.proc.pid, server.dicomweb_url

        def phase(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
            cpu0, wall0 = run.process_tree_cpu(pid), time.perf_counter()
            out = fn()
            out["server_cpu_s"] = run.process_tree_cpu(pid) - cpu0
            out["wall_s"] = time.perf_counter() - wall0
            figures[name] = out
            return out

        bodies = run.stow_bodies(plan, corpus.stow_paths)
        stow = phase("stow", lambda: run.bench_stow(base, plan, bodies))
        bodies.clear()
        study = corpus.stow_studies[0]
        first = pydicom.dcmread(study[0], stop_before_pixels=True)
        retrieval = phase(
            "retrieval",
            lambda: run.bench_retrieval(base, plan, first.StudyInstanceUID, len(study)),
        )
        run.load_untimed(base, [corpus.multiframe], batch=1, clients=1)
        mf = pydicom.dcmread(corpus.multiframe, stop_before_pixels=True)
        frames = phase("frame", lambda: run.bench_frames(base, plan, mf))
        run.load_untimed(base, corpus.qido_paths)
        qido = phase("qido", lambda: run.bench_qido(base, plan, corpus.qido_patient_ids))
        log(
            f"[{mode}] STOW {stow['instances_per_s']:.0f} inst/s "
            f"({stow['mb_per_s']:.0f} MB/s, server CPU {stow['server_cpu_s']:.1f} s); "
            f"retrieval {retrieval['mb_per_s']:.0f} MB/s "
            f"(server CPU {retrieval['server_cpu_s']:.1f} s); frame p50 {frames['p50_ms']:.2f} ms; "
            f"QIDO p50 {qido['p50_ms']:.2f} ms"
        )
    finally:
        server.stop()
    return figures


def _median(rounds: list[dict[str, Any]], *path: str) -> float:
    values = []
    for figures in rounds:
        node: Any = figures
        for key in path:
            node = node[key]
        values.append(float(node))
    return statistics.median(values)


FIGURES = [
    ("STOW-RS inst/s", ("stow", "instances_per_s"), True),
    ("STOW-RS server CPU s", ("stow", "server_cpu_s"), False),
    ("WADO-RS retrieval MB/s", ("retrieval", "mb_per_s"), True),
    ("WADO-RS server CPU s", ("retrieval", "server_cpu_s"), False),
    ("frame p50 ms", ("frame", "p50_ms"), False),
    ("frame p95 ms", ("frame", "p95_ms"), False),
    ("QIDO-RS p50 ms", ("qido", "p50_ms"), False),
    ("QIDO-RS p95 ms", ("qido", "p95_ms"), False),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=400)
    args = parser.parse_args(argv)
    plan = run.Plan(
        mode="security",
        stow_instances=args.instances,
        retrieval_repeats=5,
        qido_studies=500,
        qido_requests=200,
    )

    def log(msg: str) -> None:
        print(f"{dt.datetime.now():%H:%M:%S} {msg}", flush=True)

    corpus = run.prepare_corpus(plan, log)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    modes = list(MODES)
    for i in range(args.rounds):
        for mode in modes[i % len(modes) :] + modes[: i % len(modes)]:
            results[mode].append(measure(mode, plan, corpus, log))

    others = [mode for mode in MODES if mode != "plain"]
    lines = [f"{'figure':<26}{'plain':>9}" + "".join(f"{m:>10}{'vs plain':>10}" for m in others)]
    summary: dict[str, dict[str, float]] = {}
    for label, path, higher_is_better in FIGURES:
        plain = _median(results["plain"], *path)
        row = {"plain": plain}
        line = f"{label:<26}{plain:>9.2f}"
        for mode in others:
            value = _median(results[mode], *path)
            # Overhead: how much worse than plain (throughput lost, or time/CPU added).
            overhead = (1 - value / plain) if higher_is_better else (value / plain - 1)
            row[mode], row[f"{mode}_overhead"] = value, overhead
            line += f"{value:>10.2f}{overhead:>+10.1%}"
        summary[label] = row
        lines.append(line)
    print("\n".join(lines))
    out = run.RESULTS_DIR / f"security-cost-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rounds": args.rounds,
                "machine": run.machine_info(),
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
