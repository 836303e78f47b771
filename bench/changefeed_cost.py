"""What the change feed and a webhook cost ingest: StoreService with them on and off, one run.

Usage:  .venv/bin/python bench/changefeed_cost.py [--rounds 5] [--instances 300] [--clients 4]
                                                    [--every 1.0]

Each round stores the same CT instances (512x512 16-bit, about 0.5 MB each, from
nubis.tools.synth) into a fresh archive three times, in rotating order: "off" with
``change_feed=false``, "feed" with the change feed alone, and "webhook" with the feed and one
webhook subscription whose receiver (a local HTTP server in another process) is delivered to
by the ``webhooks`` job's handler running in a thread of the same process every ``--every``
seconds throughout (more often than a server's default of 5 s, so it costs more), as a
server's job runner does. ``clients`` threads call StoreService.store as STOW-RS and C-STORE
do, with the archive's defaults otherwise (fsync, encryption at rest, audit trail). Ingest
wall time and process CPU are timed; after each "webhook" round the receiver must have every
entry. The medians over rounds and the overheads against "off" are printed and written to
bench/results/changefeed_cost.json.
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
from nubis.jobs.context import JobContext
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


def one_round(
    mode: str, files: list[Path], clients: int, receiver: Receiver, every: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nubis-feed-bench-") as tmp:
        settings = load_settings(
            environ={},
            overrides={
                "data_dir": tmp,
                "jobs": "false",
                "dimse_port": "0",
                "log_level": "warning",
                "change_feed": "false" if mode == "off" else "true",
            },
        )
        archive = Archive(settings)
        archive.prepare()
        archive.start(background=False)
        admin = system_principal("bench")
        stop = threading.Event()
        deliverer: threading.Thread | None = None
        # The delivery thread's own CPU while ingest ran: the steadiest measure of its cost.
        delivery_cpu = [0.0]
        receiver.count("/reset")
        if mode == "webhook":
            archive.webhooks.add(admin, "bench", receiver.url, role="admin")

            def deliver() -> None:
                started = time.thread_time()
                while True:
                    delivery_cpu[0] = time.thread_time() - started
                    finished = stop.is_set()
                    job_id = archive.jobs.enqueue("webhooks")
                    job = archive.jobs.get(job_id)
                    assert job is not None
                    archive.webhook_delivery.run(JobContext(job, threading.Event()))
                    delivery_cpu[0] = time.thread_time() - started
                    if finished:
                        return
                    stop.wait(every)

            deliverer = threading.Thread(target=deliver)
            deliverer.start()
        try:

            def store(path: Path) -> None:
                outcome = archive.store.store(archive.spool.from_file(path), principal=admin)
                assert outcome.ok, outcome.error

            cpu0, wall0 = time.process_time(), time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(store, files))
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            delivery_during_ingest = delivery_cpu[0]
            stop.set()
            drained = time.perf_counter()
            if deliverer is not None:
                deliverer.join()
                assert receiver.count() == len(files), receiver.count()
            return {
                "instances_per_s": len(files) / wall,
                "wall_s": wall,
                "process_cpu_s": cpu,
                "drain_after_ingest_s": time.perf_counter() - drained,
                "delivery_thread_cpu_s": delivery_during_ingest,
            }
        finally:
            stop.set()
            archive.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--every",
        type=float,
        default=1.0,
        help="seconds between delivery runs (a server's: webhook_every_seconds, 5 by default)",
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
                    figures = one_round(mode, files, args.clients, receiver, args.every)
                    rounds[mode].append(figures)
                    print(
                        f"round {i + 1} {mode:>7}: {figures['instances_per_s']:.0f} inst/s, "
                        f"CPU {figures['process_cpu_s']:.2f} s "
                        f"(delivery thread {figures['delivery_thread_cpu_s']:.3f} s)",
                        flush=True,
                    )
        finally:
            receiver.stop()
    summary = {
        mode: {
            key: statistics.median(r[key] for r in rounds[mode])
            for key in ("instances_per_s", "process_cpu_s", "delivery_thread_cpu_s")
        }
        for mode in rounds
    }
    off = summary["off"]
    costs = {
        mode: {
            "throughput": 1 - summary[mode]["instances_per_s"] / off["instances_per_s"],
            "cpu": summary[mode]["process_cpu_s"] / off["process_cpu_s"] - 1,
        }
        for mode in ("feed", "webhook")
    }
    for mode in modes:
        line = f"median {mode:>7}: {summary[mode]['instances_per_s']:.0f} inst/s, "
        line += f"CPU {summary[mode]['process_cpu_s']:.2f} s"
        if mode == "webhook":
            share = summary[mode]["delivery_thread_cpu_s"] / off["process_cpu_s"]
            line += f" (delivery thread {share:.1%} of the ingest's CPU)"
        if mode in costs:
            line += (
                f"; cost {costs[mode]['throughput']:+.1%} throughput, "
                f"{costs[mode]['cpu']:+.1%} CPU (target: under 5%)"
            )
        print(line)
    RESULTS.mkdir(exist_ok=True)
    report = {"args": vars(args), "rounds": rounds, "median": summary, "cost": costs}
    (RESULTS / "changefeed_cost.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
