"""Webhook delivery latency: from a store's commit to the receiver's arrival, at a steady rate.

Usage:  .venv/bin/python bench/webhook_latency.py [--rate 100] [--seconds 20] [--every 5 1]
                                                   [--wake-ms 0 1000]

An archive with its job runner on (as ``nubis serve`` runs it) and one webhook subscription,
its receiver a local HTTP server in another process that notes each entry's arrival time.
A paced client stores CT instances (from nubis.tools.synth, small ones: the figure is the
delivery's, not the store's) through StoreService at ``--rate`` per second; each store's
return is its commit. The latency of an entry is its arrival minus its commit (both on this
machine's clock), for each ``webhook_every_seconds`` and ``webhook_wake_ms`` given (0: no
wake by stores, the periodic job only). p50/p95/max over every entry are printed and written to
bench/results/webhook_latency.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from nubis.archive import Archive
from nubis.config import load_settings
from nubis.security.policy import system_principal
from nubis.tools import synth

RESULTS = Path(__file__).resolve().parent / "results"

# The receiver runs in a process of its own, as a real one would.
RECEIVER = r"""
import json, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
arrived = {}
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        now = time.time()
        for entry in json.loads(body):
            arrived.setdefault(entry["SopInstanceUid"], now)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        body = json.dumps(arrived).encode()
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


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(rate: float, seconds: float, every: int, wake_ms: int, corpus: Path) -> dict[str, Any]:
    count = int(rate * seconds)
    files = synth.make_ct_series(corpus, n_instances=count, seed=16, rows=64, columns=64)
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    port = int(receiver.stdout.readline())
    try:
        with tempfile.TemporaryDirectory(prefix="nubis-hook-latency-") as tmp:
            settings = load_settings(
                environ={},
                overrides={
                    "data_dir": tmp,
                    "dimse_port": "0",
                    "log_level": "warning",
                    "webhook_every_seconds": str(every),
                    "webhook_wake_ms": str(wake_ms),
                },
            )
            archive = Archive(settings)
            archive.prepare()
            admin = system_principal("bench")
            archive.start()
            try:
                archive.webhooks.add(admin, "bench", f"http://127.0.0.1:{port}/hook", role="admin")
                committed: dict[str, float] = {}
                started = time.perf_counter()
                for i, path in enumerate(files):
                    # Paced: the i-th store starts at i / rate (a burst catches up, never ahead).
                    delay = started + i / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                    dataset = archive.spool.from_file(path)
                    outcome = archive.store.store(dataset, principal=admin)
                    assert outcome.ok, outcome.error
                    committed[outcome.sop_instance_uid] = time.time()
                achieved = count / (time.perf_counter() - started)
                deadline = time.monotonic() + 4 * every + 30
                while time.monotonic() < deadline:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as answer:
                        arrived: dict[str, float] = json.loads(answer.read())
                    if len(arrived) >= count:
                        break
                    time.sleep(0.5)
            finally:
                archive.stop()
    finally:
        receiver.terminate()
        receiver.wait(10)
    assert len(arrived) == count, f"{len(arrived)} of {count} entries arrived"
    latencies = [arrived[uid] - committed[uid] for uid in committed]
    return {
        "rate_wanted": rate,
        "rate_achieved": achieved,
        "entries": count,
        "webhook_every_seconds": every,
        "webhook_wake_ms": wake_ms,
        "p50_s": statistics.median(latencies),
        "p95_s": percentile(latencies, 0.95),
        "max_s": max(latencies),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="stores per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--every", type=int, nargs="+", default=[5, 1], help="webhook_every_seconds values"
    )
    parser.add_argument(
        "--wake-ms", type=int, nargs="+", default=[0, 1000], help="webhook_wake_ms values"
    )
    parser.add_argument("--label", default="", help="a name for this run in the results file")
    args = parser.parse_args(argv)
    runs = []
    for every in args.every:
        for wake_ms in args.wake_ms:
            with tempfile.TemporaryDirectory(prefix="nubis-hook-corpus-") as corpus:
                figures = measure(args.rate, args.seconds, every, wake_ms, Path(corpus))
            runs.append(figures)
            print(
                f"webhook_every_seconds={every}, webhook_wake_ms={wake_ms}: "
                f"{figures['entries']} entries at {figures['rate_achieved']:.0f}/s; latency "
                f"p50 {figures['p50_s'] * 1000:.0f} ms, p95 {figures['p95_s'] * 1000:.0f} ms, "
                f"max {figures['max_s'] * 1000:.0f} ms",
                flush=True,
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "webhook_latency.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    previous[args.label or "latest"] = {"args": vars(args), "runs": runs}
    out.write_text(json.dumps(previous, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
