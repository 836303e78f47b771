"""QIDO-RS at scale: p50/p95 of study searches over 100,000 studies (nubis alone).

Loading 100,000 studies through STOW-RS would take the benchmark's whole budget, so the index
is filled directly through nubis's own index schema (metadata-only rows: a study, a series and
``--instances`` instances each, with realistic patient IDs, names, dates and modalities), then
`nubis serve` is started on that index and searched over HTTP exactly as bench/run.py does.

    .venv/bin/python bench/qido_scale.py [--studies 100000] [--instances 1] [--requests 400]
    .venv/bin/python bench/qido_scale.py --index postgresql --instances 10   # 1,000,000 instances

``--index postgresql`` starts a throw-away PostgreSQL (scripts/postgres/pg-start.sh, fsync on);
``--index postgresql://...`` uses an existing, empty database.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from nubis.index.database import Index  # noqa: E402
from nubis.index.schema import instances, series, studies  # noqa: E402
from orthanc import free_port  # noqa: E402
from postgres import throwaway_postgres  # noqa: E402

SURNAMES = [
    "SMITH",
    "JOHNSON",
    "MUELLER",
    "DUPONT",
    "ROSSI",
    "GARCIA",
    "NGUYEN",
    "TANAKA",
    "KOWALSKI",
    "OKAFOR",
    "SILVA",
    "HANSEN",
    "IVANOV",
    "KIM",
    "PATEL",
    "COHEN",
]
GIVEN = ["ANNA", "JOHN", "MARIA", "LI", "OMAR", "SARA", "PETER", "YUKI", "JOSE", "EMMA"]
TOKEN = "nubis-bench-admin-token-0123456789abcdef"
MODALITIES = ["CT", "MR", "CR", "US", "MG", "PT", "DX", "NM"]


def fill(index_url: str, n_studies: int, per_study: int, seed: int = 7) -> list[str]:
    """Write ``n_studies`` metadata-only studies; returns the patient ID of each study."""
    rng = random.Random(seed)
    index = Index(index_url, durable=False)
    index.migrate()
    n_patients = max(1, n_studies * 2 // 3)
    patient_ids: list[str] = []
    now = int(time.time() * 1000)
    batch = 5000
    with index.write_engine.connect() as conn:
        for start in range(0, n_studies, batch):
            study_rows, series_rows, instance_rows = [], [], []
            for pk in range(start + 1, min(start + batch, n_studies) + 1):
                patient = rng.randrange(n_patients)
                pid = f"PAT{patient:07d}"
                name = f"{SURNAMES[patient % 16]}^{GIVEN[patient % 10]}"
                year, month, day = (
                    rng.randrange(2000, 2026),
                    rng.randrange(1, 13),
                    rng.randrange(1, 29),
                )
                date = f"{year}{month:02d}{day:02d}"
                modality = rng.choice(MODALITIES)
                uid = f"1.2.826.0.1.3680043.10.1.{pk}"
                patient_ids.append(pid)
                study_rows.append(
                    {
                        "id": pk,
                        "partition": "default",
                        "study_uid": uid,
                        "patient_id": pid,
                        "patient_name": name,
                        "patient_name_folded": name,
                        "patient_sex": "O",
                        "study_date": date,
                        "study_time": "101500",
                        "accession_number": f"A{pk:08d}",
                        "study_id": str(pk),
                        "modalities": modality,
                        "num_series": 1,
                        "num_instances": per_study,
                        "attrs": "{}",
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                series_rows.append(
                    {
                        "id": pk,
                        "study_pk": pk,
                        "series_uid": uid + ".1",
                        "modality": modality,
                        "series_number": 1,
                        "num_instances": per_study,
                        "attrs": "{}",
                        "created_at": now,
                    }
                )
                instance_rows.extend(
                    {
                        "id": (pk - 1) * per_study + n,
                        "series_pk": pk,
                        "partition": "default",
                        "sop_instance_uid": f"{uid}.1.{n}",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "instance_number": n,
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "blob_key": f"{(pk - 1) * per_study + n:032x}",
                        "size": 0,
                        "sha256": "0" * 64,
                        "metadata_json": "{}",
                        "created_at": now,
                    }
                    for n in range(1, per_study + 1)
                )
            with conn.begin():
                conn.execute(insert(studies), study_rows)
                conn.execute(insert(series), series_rows)
                conn.execute(insert(instances), instance_rows)
        if index.dialect == "postgresql":
            # Rows were inserted with explicit ids: move the sequences past them.
            for table in ("studies", "series", "instances"):
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            conn.commit()
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    index.close()
    return patient_ids


def measure(base: str, urls: list[str]) -> dict[str, float]:
    samples = []
    headers = {"Accept": "application/dicom+json", "Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=base, headers=headers) as client:
        for url in urls[:20]:
            client.get(url)  # warm the page cache and the connection
        for url in urls:
            t0 = time.perf_counter()
            response = client.get(url)
            samples.append((time.perf_counter() - t0) * 1000)
            response.raise_for_status()
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(len(samples) * 0.95) - 1], 2),
        "requests": len(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=1, help="instances per study")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument(
        "--index", default="sqlite", help="sqlite, postgresql (started here), or an index URL"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qido-") as tmp, ExitStack() as stack:
        data_dir = Path(tmp)
        if args.index == "sqlite":
            index_url = f"sqlite:///{data_dir / 'index.sqlite'}"
        elif args.index == "postgresql":
            index_url = stack.enter_context(throwaway_postgres())
        else:
            index_url = args.index
        t0 = time.perf_counter()
        patient_ids = fill(index_url, args.studies, args.instances)
        print(
            f"filled {args.studies} studies, {args.studies * args.instances} instances "
            f"in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nubis",
                "serve",
                "--data-dir",
                str(data_dir),
                "--http-port",
                str(port),
                "--set",
                "log_level=warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NUBIS_ADMIN_TOKEN": TOKEN, "NUBIS_INDEX": index_url},
        )
        base = f"http://127.0.0.1:{port}/dicom-web"
        try:
            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/-/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            rng = random.Random(3)
            by_patient = [
                f"/studies?PatientID={rng.choice(patient_ids)}" for _ in range(args.requests)
            ]
            by_date = []
            for _ in range(args.requests):
                year = rng.randrange(2000, 2026)
                month = rng.randrange(1, 12)
                by_date.append(
                    f"/studies?StudyDate={year}{month:02d}01-{year}{month:02d}07&limit=100"
                )
            by_name = [
                f"/studies?PatientName={rng.choice(['smith*', 'ko*', 'tanaka^yuki'])}&limit=100"
                for _ in range(args.requests // 4)
            ]
            results = {
                "index": args.index if "://" not in args.index else "external",
                "studies": args.studies,
                "instances": args.studies * args.instances,
                "PatientID": measure(base, by_patient),
                "StudyDate week range, limit 100": measure(base, by_date),
                "PatientName wildcard, limit 100": measure(base, by_name),
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps(results, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"qido-scale-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
