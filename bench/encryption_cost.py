"""What encryption at rest costs: nubis with ``encrypt_at_rest`` on and off, side by side.

Usage:  .venv/bin/python bench/encryption_cost.py [--rounds 3] [--instances 400]

Each round starts a fresh nubis per mode (the order alternates between rounds, so drift in
the machine's load does not favour one mode) and measures, with the client code of run.py:
STOW-RS ingest (8 clients, batches of 50 CT instances of 0.5 MB), WADO-RS retrieval of a
200-instance study (SHA-256 verified on the way out in both modes), and single-frame latency
on a 2,000-frame object. Server CPU seconds per phase are recorded too: on a shared 2-core
machine they are the steadier measure of what the cipher costs. The medians over rounds and the
overheads (encrypted vs plain) are printed and written to bench/results/.
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

MODES = {"encrypted": "true", "plain": "false"}


def measure(
    mode: str, plan: run.Plan, corpus: run.Corpus, log: Callable[[str], None]
) -> dict[str, Any]:
    nubis = str(Path(sys.executable).with_name("nubis"))
    server = run.NubisServer(
        nubis,
        ["--set", f"encrypt_at_rest={MODES[mode]}", "--set", "log_level=warning"],
        run.RESULTS_DIR / "logs" / f"encryption-{mode}",
    )
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
        log(
            f"[{mode}] STOW {stow['instances_per_s']:.0f} inst/s "
            f"({stow['mb_per_s']:.0f} MB/s, server CPU {stow['server_cpu_s']:.1f} s); "
            f"retrieval {retrieval['mb_per_s']:.0f} MB/s "
            f"(server CPU {retrieval['server_cpu_s']:.1f} s); frame p50 {frames['p50_ms']:.2f} ms"
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
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--instances", type=int, default=400)
    args = parser.parse_args(argv)
    plan = run.Plan(mode="encryption", stow_instances=args.instances, retrieval_repeats=5)

    def log(msg: str) -> None:
        print(f"{dt.datetime.now():%H:%M:%S} {msg}", flush=True)

    corpus = run.prepare_corpus(plan, log)
    results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for i in range(args.rounds):
        order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
        for mode in order:
            results[mode].append(measure(mode, plan, corpus, log))

    lines = [f"{'figure':<34}{'plain':>10}{'encrypted':>11}{'overhead':>10}"]
    summary = {}
    for label, path, higher_is_better in FIGURES:
        plain = _median(results["plain"], *path)
        enc = _median(results["encrypted"], *path)
        # Overhead: how much worse encrypted is (throughput lost, or time/CPU added).
        overhead = (plain / enc - 1) if higher_is_better else (enc / plain - 1)
        summary[label] = {"plain": plain, "encrypted": enc, "overhead": overhead}
        lines.append(f"{label:<34}{plain:>10.2f}{enc:>11.2f}{overhead:>+10.1%}")
    print("\n".join(lines))
    out = run.RESULTS_DIR / f"encryption-cost-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
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
