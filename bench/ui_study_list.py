"""The web face's study list at scale: first-page time, p50/p95, over 100,000 studies.

The index is filled directly with metadata-only rows (bench/qido_scale.py's ``fill``: a study,
a series and one instance each, realistic patient IDs, names, dates, modalities), two users are
added (a radiologist, and a referrer with 20 granted patients), then ``nubis serve`` runs on
that index and a browser session (signed in through /ui/login, as a browser does) requests
the study browser's pages over HTTP on loopback. Each figure is the time from sending the
request to the last byte of the page: server time plus the client's own ~0.3 ms.

    .venv/bin/python bench/ui_study_list.py [--studies 100000] [--requests 300]
    .venv/bin/python bench/ui_study_list.py --index postgresql   # a throw-away PostgreSQL

Pages measured: the first page as a browser first sees it (newest study date first), sorted by
patient name, a patient-name search (the POST of the form is not timed; its results page is),
a one-month date range sorted by name, a deep page (page 200), and a referrer's first page.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from nubis.index.database import Index  # noqa: E402
from nubis.security.users import UserStore  # noqa: E402
from orthanc import free_port  # noqa: E402
from postgres import throwaway_postgres  # noqa: E402
from qido_scale import SURNAMES, fill  # noqa: E402

TOKEN = "nubis-bench-admin-token-0123456789abcdef"
PASSWORD = "bench-password-for-the-web-face"
TARGET_P95_MS = 300.0


def add_users(index_url: str, patient_ids: list[str]) -> None:
    index = Index(index_url, durable=False)
    index.open()
    users = UserStore(index)
    users.add_user("rad", tenant="default", roles="radiologist", password=PASSWORD)
    users.add_user("ref", tenant="default", roles="referrer", password=PASSWORD)
    for patient in random.Random(5).sample(sorted(set(patient_ids)), 20):
        users.grant("ref", tenant="default", patient_id=patient)
    index.close()


def session(base: str, user: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60)
    form = client.get("/ui/login")
    token = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
    assert token, form.text[:500]
    signed = client.post(
        "/ui/login",
        data={"username": user, "password": PASSWORD, "login_csrf": token.group(1)},
        follow_redirects=True,
    )
    assert signed.status_code == 200 and "Studies" in signed.text, signed.status_code
    return client


def search_url(client: httpx.Client, **fields: str) -> str:
    """The results URL of a search (the form's POST answers a redirect to it)."""
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/ui/upload").text)
    assert csrf
    response = client.post("/ui/", data={"csrf_token": csrf.group(1), **fields})
    assert response.status_code == 303, response.text[:500]
    return response.headers["location"]


def measure(client: httpx.Client, urls: list[str]) -> dict[str, float]:
    for url in urls[:10]:
        client.get(url)  # warm the connection, the page cache and the templates
    samples = []
    rows = 0
    for url in urls:
        t0 = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
        rows = response.text.count('<tr class="study"')
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
        "requests": len(samples),
        "rows_on_last_page": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--index", default="sqlite", help="sqlite, or postgresql (started here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        if args.index == "postgresql":
            index_url = stack.enter_context(throwaway_postgres())
        else:
            index_url = f"sqlite:///{data_dir / 'index.sqlite'}"
        t0 = time.perf_counter()
        patient_ids = fill(index_url, args.studies, 1)
        add_users(index_url, patient_ids)
        print(f"filled {args.studies} studies in {time.perf_counter() - t0:.1f}s", flush=True)
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "nubis", "serve", "--data-dir", str(data_dir),
             "--http-port", str(port), "--set", "log_level=warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NUBIS_ADMIN_TOKEN": TOKEN, "NUBIS_INDEX": index_url},
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"{base}/-/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            rad, ref = session(base, "rad"), session(base, "ref")
            rng = random.Random(3)
            n = args.requests
            by_name = [
                search_url(rad, patient_name=rng.choice(SURNAMES).title()) for _ in range(20)
            ]
            months = []
            for _ in range(20):
                year, month = rng.randrange(2000, 2026), rng.randrange(1, 13)
                months.append(
                    search_url(
                        rad,
                        date_from=f"{year}-{month:02d}-01",
                        date_to=f"{year}-{month:02d}-28",
                        sort="name",
                        dir="asc",
                    )
                )
            results = {
                "index": args.index,
                "studies": args.studies,
                "first page (study date, newest first)": measure(rad, ["/ui/"] * n),
                "sorted by patient name": measure(rad, ["/ui/?sort=name&dir=asc"] * n),
                "patient name search": measure(rad, [rng.choice(by_name) for _ in range(n)]),
                "one-month range, sorted by name": measure(
                    rad, [rng.choice(months) for _ in range(n)]
                ),
                "page 200": measure(rad, ["/ui/?sort=date&dir=desc&page=200"] * (n // 3)),
                "referrer (20 granted patients), first page": measure(ref, ["/ui/"] * n),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(results, indent=2))
    worst = max(v["p95_ms"] for v in results.values() if isinstance(v, dict))
    print(f"worst p95 {worst} ms (target < {TARGET_P95_MS:.0f} ms)")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"ui-study-list-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results))
    return 0 if worst < TARGET_P95_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
