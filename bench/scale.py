"""Scale out (issue 5): STOW, WADO retrieval and QIDO on PostgreSQL + Ceph RGW with one node and
with two, against the embedded defaults (SQLite + folder), in one run on one machine.

Every configuration gets the same corpus and the same client load as bench/run.py (8 STOW
clients in all, 50 instances per request; whole-study retrieval; QIDO by PatientID). With two
nodes the load is split between them: half the STOW clients, one retriever and half the QIDO
requests per node, run at once; throughput is the total over the wall time of the phase.

    .venv/bin/python bench/scale.py [--quick|--full] [--configs embedded,pg-ceph-1,pg-ceph-2]

PostgreSQL (fsync on) and Ceph RGW (bluestore on a sparse file, so a PUT reaches a disk) are
started here from Debian's packages by the same scripts the test suite uses, and stopped after.
Every node runs with the defaults (auth, audit, encryption at rest on; one worker per core).
On one machine the nodes share its cores with PostgreSQL, Ceph and the client: the figures show
what sharing the index and the object store costs, not what a second machine adds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pydicom

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH_DIR))

from orthanc import free_port  # noqa: E402
from postgres import throwaway_postgres  # noqa: E402
from run import (  # noqa: E402
    PLANS,
    RESULTS_DIR,
    NubisServer,
    Plan,
    bench_qido,
    bench_retrieval,
    bench_stow,
    load_untimed,
    machine_busy_cpu,
    prepare_corpus,
    stow_bodies,
)

CEPH_SCRIPTS = ROOT / "scripts" / "ceph"
CONFIGS = ("embedded", "pg-ceph-1", "pg-ceph-2")


@contextmanager
def throwaway_ceph() -> Iterator[str]:
    """Ceph RGW (bluestore) on free ports; yields a ``blobs`` URL with credentials in env."""
    folder = Path(tempfile.mkdtemp(prefix="bench-ceph-"))
    http, mon = free_port(), free_port()
    env = {
        **os.environ,
        "CEPH_S3_DIR": str(folder / "c"),
        "CEPH_S3_PORT": str(http),
        "CEPH_MON_PORT": str(mon),
        "CEPH_OSD_STORE": "bluestore",
        "CEPH_OSD_SIZE_GB": "20",
        "CEPH_STORAGE_CLASSES": "",
        "PYTHON": sys.executable,
    }
    subprocess.run(["bash", str(CEPH_SCRIPTS / "ceph-rgw-start.sh")], env=env, check=True)
    try:
        s3 = {}
        for line in (folder / "c" / "s3.env").read_text().splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            s3[name.strip()] = value.strip()
        os.environ.update(
            AWS_ACCESS_KEY_ID=s3["AWS_ACCESS_KEY_ID"],
            AWS_SECRET_ACCESS_KEY=s3["AWS_SECRET_ACCESS_KEY"],
            AWS_DEFAULT_REGION=s3["AWS_DEFAULT_REGION"],
        )
        yield f"s3://{s3['S3_BUCKET']}/bench?endpoint={s3['S3_ENDPOINT_URL']}"
    finally:
        subprocess.run(["bash", str(CEPH_SCRIPTS / "ceph-rgw-stop.sh")], env=env, check=False)


def _at_once(calls: Sequence[Callable[[], dict[str, Any]]]) -> tuple[list[dict[str, Any]], float]:
    """Run ``calls`` in parallel threads; their results and the wall time of them all."""
    results: list[dict[str, Any]] = [{} for _ in calls]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, time.perf_counter() - t0


def measure(bases: list[str], plan: Plan, corpus: Any, log: Callable[[str], None]) -> dict:
    n = len(bases)
    share = Plan(**{**plan.__dict__, "stow_clients": plan.stow_clients // n})
    bodies = stow_bodies(plan, corpus.stow_paths)
    busy0 = machine_busy_cpu()
    stows, wall = _at_once(
        [lambda i=i: bench_stow(bases[i], share, bodies[i::n]) for i in range(n)]
    )
    stored = sum(s["instances"] for s in stows)
    out: dict[str, Any] = {
        "nodes": n,
        "stow": {
            "instances": stored,
            "instances_per_s": stored / wall,
            "mb_per_s": sum(s["mb_per_s"] * s["seconds"] for s in stows) / wall,
            "cpu_busy_s": machine_busy_cpu() - busy0,
            "wall_s": wall,
        },
    }
    log(f"  STOW {out['stow']['instances_per_s']:.0f} inst/s")
    load_untimed(bases[0], corpus.qido_paths)
    study = corpus.stow_studies[0]
    uid = pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID
    runs, wall = _at_once([lambda b=b: bench_retrieval(b, plan, uid, len(study)) for b in bases])
    moved = sum(r["bytes_per_retrieval"] * r["repeats"] for r in runs)
    out["retrieval"] = {"mb_per_s": moved / wall / 1e6, "per_node": runs}
    log(f"  retrieval {out['retrieval']['mb_per_s']:.0f} MB/s")
    half = Plan(**{**plan.__dict__, "qido_requests": plan.qido_requests // n})
    ids = corpus.qido_patient_ids
    queries, wall = _at_once([lambda b=b: bench_qido(b, half, ids) for b in bases])
    out["qido"] = {
        "requests_per_s": sum(q["n"] for q in queries) / wall,
        "p50_ms": max(q["p50_ms"] for q in queries),
        "p95_ms": max(q["p95_ms"] for q in queries),
        "wrong_result_counts": sum(q["wrong_result_counts"] for q in queries),
    }
    log(f"  QIDO p50 {out['qido']['p50_ms']:.1f} ms, {out['qido']['requests_per_s']:.0f} req/s")
    return out


def run_config(name: str, plan: Plan, corpus: Any, log: Callable[[str], None]) -> dict:
    log(f"[{name}]")
    with ExitStack() as stack:
        env: dict[str, str] = {}
        n_nodes = 1
        if name.startswith("pg-ceph"):
            n_nodes = int(name.rsplit("-", 1)[1])
            secrets = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-k-")))
            nubis = str(Path(sys.executable).parent / "nubis")
            keks = secrets / "keks"
            subprocess.run([nubis, "keys", "new-secret", "--out", str(keks)], check=True)
            env = {
                "NUBIS_INDEX": stack.enter_context(throwaway_postgres()),
                "NUBIS_BLOBS": stack.enter_context(throwaway_ceph()),
                # Every node is given the same read-only secrets, as a deployment mounts them;
                # patient keys live in the index.
                "NUBIS_KEYRING": f"index+{keks.as_uri()}",
                "NUBIS_AUDIT_KEY": str(secrets / "audit-signing.key"),
            }
            subprocess.run(
                [nubis, "audit", "key"], env={**os.environ, **env}, check=True, capture_output=True
            )
        nodes = []
        for i in range(n_nodes):
            node = NubisServer(
                str(Path(sys.executable).parent / "nubis"),
                [],
                RESULTS_DIR / "logs" / f"scale-{name}-{i}",
                env=env,
            )
            stack.callback(node.stop)
            node.start()
            nodes.append(node)
        return measure([n.dicomweb_url for n in nodes], plan, corpus, log)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="bench/run.py's full plan")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    args = parser.parse_args(argv)
    plan = PLANS["full" if args.full else "quick"]

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    corpus = prepare_corpus(plan, log)
    results = {
        name: run_config(name, plan, corpus, log) for name in args.configs.split(",") if name
    }
    print(
        f"\n{'config':12} {'STOW inst/s':>12} {'WADO MB/s':>10} {'QIDO p50 ms':>12} {'QIDO/s':>8}"
    )
    for name, r in results.items():
        print(
            f"{name:12} {r['stow']['instances_per_s']:12.0f} {r['retrieval']['mb_per_s']:10.0f} "
            f"{r['qido']['p50_ms']:12.1f} {r['qido']['requests_per_s']:8.0f}"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"scale-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"plan": plan.__dict__, "results": results}, indent=2))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
