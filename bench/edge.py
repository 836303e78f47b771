"""An edge node in front of a cloud archive: forward lag at a steady ingest, and the read
latency of an evicted object against a local one (issue 13, docs/edge.md).

Two ``nubis serve`` on loopback, one worker each (the servers of bench/replication_lag.py): a
cloud archive, and an edge with ``forward_to`` naming it (the cloud's admin key as its
service credential). Objects are 0.5 MB CT (512x512x16 bit, nubis.tools.synth), one per
STOW-RS request to the edge.

1. Steady ingest at ``--rate`` objects/s for ``--seconds``: the forward lag of each object is
   the cloud's commit time minus the edge's (p50, p95, max), the backlog sampled every 0.1 s.
2. ``--reads`` of those objects through the edge's WADO-RS as stored, while local: latency.
3. The edge stopped, its study aged past ``edge_keep_days`` in its index, started again with
   ``edge_evict_every_seconds = 1``: the eviction job evicts it (the cloud confirmed every
   object). The same reads again, now fetched from the cloud and checked by SHA-256.

    .venv/bin/python bench/edge.py --rate 20 --seconds 20 --reads 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from nubis.tools.synth import make_ct_series  # noqa: E402
from replication_lag import (  # noqa: E402
    AUTH,
    TOKEN,
    Copies,
    Server,
    _free_port,
    _percentile,
    _query,
    _wait,
    steady,
)

_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_DAY_MS = 86400 * 1000


def _reads(edge: Server, study: str, series: str, sops: list[str]) -> dict[str, float]:
    took = []
    with httpx.Client() as client:
        for sop in sops:
            started = time.perf_counter()
            answer = client.get(
                f"{edge.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}",
                headers={**AUTH, "Accept": _ACCEPT},
                timeout=60,
            )
            took.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise SystemExit(f"read of {sop}: HTTP {answer.status_code} {answer.text[:200]}")
    return {
        "p50_ms": round(statistics.median(took) * 1000, 1),
        "p95_ms": round(_percentile(took, 0.95) * 1000, 1),
        "max_ms": round(max(took) * 1000, 1),
    }


def _age(edge: Server, days: int) -> None:
    with closing(sqlite3.connect(edge.data_dir / "index.sqlite", timeout=30)) as conn:
        conn.execute("UPDATE studies SET updated_at = updated_at - ?", (days * _DAY_MS,))
        conn.commit()


def _evicted(edge: Server) -> int:
    sql = "SELECT count(*) FROM edge_copies WHERE evicted_at IS NOT NULL"
    return int(_query(edge, sql)[0][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20, help="objects/s of steady ingest")
    parser.add_argument("--seconds", type=float, default=20, help="length of steady ingest")
    parser.add_argument("--reads", type=int, default=50, help="objects read, local then evicted")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="nubis-bench-edge-"))
    cloud = Server(root / "cloud", _free_port(), {})
    edge = Server(root / "edge", _free_port(), {})
    try:
        [template] = make_ct_series(root / "template", n_instances=1, seed=5)
        copies = Copies(template)
        cloud.start()
        edge.env = {
            "NUBIS_FORWARD_TO": f"{cloud.url}/dicom-web",
            "NUBIS_FORWARD_API_KEY": TOKEN,
            "NUBIS_REPLICATE_EVERY_SECONDS": "1",
            "NUBIS_REPLICATE_RETRY_MAX_SECONDS": "2",
        }
        edge.start()
        figures: dict[str, Any] = {"object_mb": round(len(copies.data) / 1e6, 3)}
        figures["forward"] = steady(edge, cloud, copies, args.rate, args.seconds)
        [(study, series)] = _query(edge, "SELECT DISTINCT st.study_uid, se.series_uid FROM "
                                   "studies st JOIN series se ON se.study_pk = st.id")  # fmt: skip
        sops = [r[0] for r in _query(edge, "SELECT sop_instance_uid FROM instances")][: args.reads]
        figures["read_local"] = _reads(edge, study, series, sops)
        edge.stop()
        _age(edge, 31)
        edge.env["NUBIS_EDGE_EVICT_EVERY_SECONDS"] = "1"
        edge.start()
        total = int(_query(edge, "SELECT count(*) FROM instances")[0][0])
        figures["evicted_after_start_s"] = round(_wait(lambda: _evicted(edge) == total, 120), 2)
        figures["read_evicted"] = _reads(edge, study, series, sops)
        figures["cpus"] = os.cpu_count()
        print(json.dumps(figures, indent=1))
    finally:
        edge.stop()
        cloud.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
