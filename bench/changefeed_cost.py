"""What the change feed and a webhook cost ingest: StoreService with them on and off, one run.

Usage:  .venv/bin/python bench/changefeed_cost.py [--rounds 5] [--instances 300] [--clients 4]
                                                    [--every 5] [--wake-ms 1000]

Each round stores the same CT instances (512x512 16-bit, about 0.5 MB each, from
nubis.tools.synth) into a fresh archive three times, in rotating order: "off" with
``change_feed=false``, "feed" with the change feed alone, and "webhook" with the feed and one
webhook subscription whose receiver (a local HTTP server in another process) is delivered to
by the archive's own job runner, as a server runs it: the ``webhooks`` job every ``--every``
seconds and, woken by the stores, at most every ``--wake-ms``. ``clients`` threads call
StoreService.store as STOW-RS and C-STORE do, with the archive's defaults otherwise (fsync,
encryption at rest, audit trail). Ingest wall time and process CPU are timed; after each
"webhook" round the receiver must have every entry. The medians over rounds and the
overheads against "off" are printed and written to bench/results/changefeed_cost.json; the
costs are the medians of each round's ratios (its modes ran back to back), with quartiles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nubis.archive import Archive
from nubis.config import load_settings
from nubis.security.policy import system_principal
from nubis.tools import synth

RESULTS = Path(__file__).resolve().parent / "results"


# The receiver runs in a process of its own, as a real one would: its CPU is not nubis's.
RECEIVER = r"""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
taken = 0
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        global taken
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Nubis-Signature", "").startswith("t="):
            taken += len(json.loads(body))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        global taken
        body = str(taken).encode()
        if self.path == "/reset":
            taken = 0
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class Receiver:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def count(self, path: str = "/count") -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}") as answer:
            return int(answer.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _runner_cpu() -> float:
    """CPU seconds of the job runner's thread (the webhooks job runs in it), 0 without one."""
    for thread in threading.enumerate():
        if thread.name == "nubis-jobs" and thread.ident is not None:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return 0.0


def one_round(
    mode: str, files: list[Path], clients: int, receiver: Receiver, every: int, wake_ms: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nubis-feed-bench-") as tmp:
        settings = load_settings(
            environ={},
            overrides={
                "data_dir": tmp,
                "dimse_port": "0",
                "log_level": "warning",
                "change_feed": "false" if mode == "off" else "true",
                # The runner as a server runs it, without the periodic housekeeping jobs
                # (their start-up runs would be noise beside a few seconds of ingest).
                "jobs_schedule": "",
                "webhook_every_seconds": str(every),
                "webhook_wake_ms": str(wake_ms),
            },
        )
        archive = Archive(settings)
        archive.prepare()
        admin = system_principal("bench")
        receiver.count("/reset")
        archive.start()
        if mode == "webhook":
            archive.webhooks.add(admin, "bench", receiver.url, role="admin")
        try:
            time.sleep(0.5)  # the runner's first look (and a webhooks run) before the clock

            def store(path: Path) -> None:
                outcome = archive.store.store(archive.spool.from_file(path), principal=admin)
                assert outcome.ok, outcome.error

            runner0 = _runner_cpu()
            cpu0, wall0 = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(store, files))
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            runner_cpu = _runner_cpu() - runner0
            drained = time.perf_counter()
            if mode == "webhook":
                deadline = time.monotonic() + 4 * every + 30
                while receiver.count() < len(files) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert receiver.count() == len(files), receiver.count()
            return {
                "instances_per_s": len(files) / wall,
                "wall_s": wall,
                "process_cpu_s": cpu,
                "drain_after_ingest_s": time.perf_counter() - drained,
                "runner_thread_cpu_s": runner_cpu,
            }
        finally:
            archive.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--every",
        type=int,
        default=5,
        help="webhook_every_seconds (a store also wakes the webhooks job: docs/events.md)",
    )
    parser.add_argument(
        "--wake-ms", type=int, default=1000, help="webhook_wake_ms (0: no wake by stores)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nubis-feed-corpus-") as corpus:
        files = synth.make_ct_series(Path(corpus), n_instances=args.instances, seed=15)
        size = sum(p.stat().st_size for p in files) / len(files)
        print(f"{len(files)} CT instances of {size / 1e6:.2f} MB, {args.clients} clients")
        receiver = Receiver()
        modes = ["off", "feed", "webhook"]
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        try:
            for i in range(args.rounds):
                # The order rotates, so drift in the machine's load favours no mode.
                for mode in modes[i % 3 :] + modes[: i % 3]:
                    figures = one_round(
                        mode, files, args.clients, receiver, args.every, args.wake_ms
                    )
                    rounds[mode].append(figures)
                    print(
                        f"round {i + 1} {mode:>7}: {figures['instances_per_s']:.0f} inst/s, "
                        f"CPU {figures['process_cpu_s']:.2f} s "
                        f"(job runner's thread {figures['runner_thread_cpu_s']:.3f} s)",
                        flush=True,
                    )
        finally:
            receiver.stop()
    keys = ("instances_per_s", "process_cpu_s", "runner_thread_cpu_s")
    summary = {
        mode: {key: statistics.median(r[key] for r in rounds[mode]) for key in keys}
        for mode in rounds
    }
    # Each round's modes ran back to back, so their ratio is the steadier figure when the
    # machine's load drifts between rounds: the median of the rounds' ratios.
    costs = {
        mode: {
            "cpu": statistics.median(
                r["process_cpu_s"] / o["process_cpu_s"] - 1
                for r, o in zip(rounds[mode], rounds["off"], strict=True)
            ),
            "cpu_quartiles": statistics.quantiles(
                [
                    r["process_cpu_s"] / o["process_cpu_s"] - 1
                    for r, o in zip(rounds[mode], rounds["off"], strict=True)
                ],
                n=4,
            )
            if args.rounds >= 2
            else [],
            "throughput": 1
            - statistics.median(
                r["instances_per_s"] / o["instances_per_s"]
                for r, o in zip(rounds[mode], rounds["off"], strict=True)
            ),
        }
        for mode in ("feed", "webhook")
    }
    off = summary["off"]
    for mode in modes:
        line = f"median {mode:>7}: {summary[mode]['instances_per_s']:.0f} inst/s, "
        line += f"CPU {summary[mode]['process_cpu_s']:.2f} s"
        if mode == "webhook":
            share = summary[mode]["runner_thread_cpu_s"] / off["process_cpu_s"]
            line += f" (job runner's thread {share:.1%} of the ingest's CPU)"
        if mode in costs:
            quartiles = ", ".join(f"{q:+.1%}" for q in costs[mode]["cpu_quartiles"])
            line += (
                f"; cost {costs[mode]['throughput']:+.1%} throughput, "
                f"{costs[mode]['cpu']:+.1%} CPU (quartiles {quartiles}; target: under 5%)"
            )
        print(line)
    RESULTS.mkdir(exist_ok=True)
    report = {"args": vars(args), "rounds": rounds, "median": summary, "cost": costs}
    (RESULTS / "changefeed_cost.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
