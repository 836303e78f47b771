"""What the change feed and a webhook cost ingest: StoreService with them on and off, one run.

Usage:  .venv/bin/python bench/changefeed_cost.py [--rounds 5] [--instances 300] [--clients 4]

Each round stores the same CT instances (512x512 16-bit, about 0.5 MB each, from
nubis.tools.synth) into a fresh archive twice, in alternating order: "off" with
``change_feed=false``, "on" with the feed and one webhook subscription whose receiver (a local
HTTP server answering 204 after checking the signature) is delivered to by the ``webhooks``
job's handler running in a thread of the same process throughout, as a server's job runner
does. ``clients`` threads call StoreService.store as STOW-RS and C-STORE do, with the archive's
defaults otherwise (fsync, encryption at rest, audit trail). Ingest wall time and process CPU
are timed; after each "on" round the receiver must have every entry. The medians over rounds
and the overhead of "on" are printed and written to bench/results/changefeed_cost.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from nubis.archive import Archive
from nubis.config import load_settings
from nubis.events.signing import HEADER, verify
from nubis.jobs.context import JobContext
from nubis.security.policy import system_principal
from nubis.tools import synth

RESULTS = Path(__file__).resolve().parent / "results"


class Receiver:
    def __init__(self) -> None:
        self.secret = ""
        self.taken = 0
        self.bad = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if verify(receiver.secret, self.headers.get(HEADER, ""), body):
                    receiver.taken += 1
                    self.send_response(204)
                else:
                    receiver.bad += 1
                    self.send_response(401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def one_round(on: bool, files: list[Path], clients: int, receiver: Receiver) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nubis-feed-bench-") as tmp:
        settings = load_settings(
            environ={},
            overrides={
                "data_dir": tmp,
                "jobs": "false",
                "dimse_port": "0",
                "log_level": "warning",
                "change_feed": "true" if on else "false",
            },
        )
        archive = Archive(settings)
        archive.prepare()
        archive.start(background=False)
        admin = system_principal("bench")
        stop = threading.Event()
        deliverer: threading.Thread | None = None
        receiver.taken = 0
        if on:
            _, receiver.secret = archive.webhooks.add(admin, "bench", receiver.url, role="admin")

            def deliver() -> None:
                while True:
                    finished = stop.is_set()
                    job_id = archive.jobs.enqueue("webhooks")
                    job = archive.jobs.get(job_id)
                    assert job is not None
                    archive.webhook_delivery.run(JobContext(job, threading.Event()))
                    if finished:
                        return
                    time.sleep(0.2)

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
            stop.set()
            drained = time.perf_counter()
            if deliverer is not None:
                deliverer.join()
                assert receiver.taken == len(files) and receiver.bad == 0, receiver.taken
            return {
                "instances_per_s": len(files) / wall,
                "wall_s": wall,
                "process_cpu_s": cpu,
                "drain_after_ingest_s": time.perf_counter() - drained,
            }
        finally:
            stop.set()
            archive.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nubis-feed-corpus-") as corpus:
        files = synth.make_ct_series(Path(corpus), n_instances=args.instances, seed=15)
        size = sum(p.stat().st_size for p in files) / len(files)
        print(f"{len(files)} CT instances of {size / 1e6:.2f} MB, {args.clients} clients")
        receiver = Receiver()
        rounds: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for i in range(args.rounds):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                figures = one_round(mode == "on", files, args.clients, receiver)
                rounds[mode].append(figures)
                print(
                    f"round {i + 1} {mode:>3}: {figures['instances_per_s']:.0f} inst/s, "
                    f"CPU {figures['process_cpu_s']:.1f} s",
                    flush=True,
                )
    summary = {
        mode: {
            key: statistics.median(r[key] for r in rounds[mode])
            for key in ("instances_per_s", "process_cpu_s")
        }
        for mode in rounds
    }
    throughput_cost = 1 - summary["on"]["instances_per_s"] / summary["off"]["instances_per_s"]
    cpu_cost = summary["on"]["process_cpu_s"] / summary["off"]["process_cpu_s"] - 1
    print(
        f"median ingest: off {summary['off']['instances_per_s']:.0f} inst/s, "
        f"on {summary['on']['instances_per_s']:.0f} inst/s: cost {throughput_cost:+.1%} "
        f"throughput, {cpu_cost:+.1%} CPU (target: under 5%)"
    )
    RESULTS.mkdir(exist_ok=True)
    report = {
        "args": vars(args),
        "rounds": rounds,
        "median": summary,
        "throughput_cost": throughput_cost,
        "cpu_cost": cpu_cost,
    }
    (RESULTS / "changefeed_cost.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
