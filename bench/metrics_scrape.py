"""`/metrics` scrape time on an archive of 100,000 studies (issue 15).

The index is filled directly as bench/qido_scale.py does (metadata-only rows: a study, a series
and ``--instances`` instances each), then the archive is opened in-process on it and
``GET /metrics`` is asked ``--scrapes`` times through Starlette's TestClient as a monitor. The
first scrape counts storage by tier (nubis.services.gauges recounts it every few minutes);
the others read jobs, the audit chain's head and free disk only. ``gauges_read`` is the
index part of a scrape alone (nubis.services.gauges), without HTTP and the exposition.

    .venv/bin/python bench/metrics_scrape.py [--studies 100000] [--instances 3] [--scrapes 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from nubis.archive import Archive  # noqa: E402
from nubis.config import load_settings  # noqa: E402
from nubis.security.policy import system_principal  # noqa: E402
from nubis.web.app import create_app  # noqa: E402
from qido_scale import fill  # noqa: E402

TOKEN = "nubis-bench-admin-token-0123456789abcdef"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nubis-metrics-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        started = time.perf_counter()
        fill(f"sqlite:///{data / 'index.sqlite'}", args.studies, args.instances)
        filled = time.perf_counter() - started
        settings = load_settings(
            environ={},
            overrides={
                "data_dir": str(data),
                "admin_token": TOKEN,
                "dimse_port": "0",
                "durable": "false",
                "log_level": "warning",
            },
        )
        archive = Archive(settings)
        with TestClient(create_app(archive)) as client:
            archive.users.add_user("prometheus", tenant="default", roles="monitor")
            key = archive.users.create_api_key("prometheus")[1]
            headers = {"Authorization": f"Bearer {key}"}
            times = []
            for _ in range(args.scrapes):
                began = time.perf_counter()
                response = client.get("/metrics", headers=headers)
                times.append(time.perf_counter() - began)
                assert response.status_code == 200, response.text
            reads = []
            for _ in range(args.scrapes):
                began = time.perf_counter()
                archive.gauges.read(system_principal())
                reads.append(time.perf_counter() - began)
            assert f'nubis_storage_objects{{tier="hot"}} {args.studies * args.instances}' in (
                response.text.replace(".0\n", "\n")
            ), response.text[-2000:]
    warm = sorted(times[1:])
    result = {
        "studies": args.studies,
        "instances": args.studies * args.instances,
        "fill_seconds": round(filled, 1),
        "first_scrape_ms": round(times[0] * 1000, 1),
        "scrape_p50_ms": round(statistics.median(warm) * 1000, 1),
        "scrape_max_ms": round(warm[-1] * 1000, 1),
        "gauges_read_p50_ms": round(statistics.median(reads) * 1000, 1),
        "body_bytes": len(response.content),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
