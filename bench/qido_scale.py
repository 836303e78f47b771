"""QIDO-RS at scale: p50/p95 of study searches over 100,000 studies (nubis alone).

Loading 100,000 studies through STOW-RS would take the benchmark's whole budget, so the index
is filled directly through nubis's own index schema (metadata-only rows: a study, a series and
one instance each, with realistic patient IDs, names, dates and modalities), then `nubis serve`
is started on that data folder and searched over HTTP exactly as bench/run.py does.

    .venv/bin/python bench/qido_scale.py [--studies 100000] [--requests 400]
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
from pathlib import Path

import httpx
from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from nubis.index.database import Index  # noqa: E402
from nubis.index.schema import instances, series, studies  # noqa: E402
from orthanc import free_port  # noqa: E402

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


def fill(data_dir: Path, n_studies: int, seed: int = 7) -> list[str]:
    """Write ``n_studies`` metadata-only studies; returns the patient ID of each study."""
    rng = random.Random(seed)
    index = Index(f"sqlite:///{data_dir / 'index.sqlite'}", durable=False)
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
                        "num_instances": 1,
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
                        "num_instances": 1,
                        "attrs": "{}",
                        "created_at": now,
                    }
                )
                instance_rows.append(
                    {
                        "id": pk,
                        "series_pk": pk,
                        "partition": "default",
                        "sop_instance_uid": uid + ".1.1",
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "instance_number": 1,
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "blob_key": f"{pk:032x}",
                        "size": 0,
                        "sha256": "0" * 64,
                        "metadata_json": "{}",
                        "created_at": now,
                    }
                )
            with conn.begin():
                conn.execute(insert(studies), study_rows)
                conn.execute(insert(series), series_rows)
                conn.execute(insert(instances), instance_rows)
        conn.exec_driver_sql("ANALYZE")
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
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qido-") as tmp:
        data_dir = Path(tmp)
        t0 = time.perf_counter()
        patient_ids = fill(data_dir, args.studies)
        print(f"filled {args.studies} studies in {time.perf_counter() - t0:.1f}s", flush=True)
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
            env={**os.environ, "NUBIS_ADMIN_TOKEN": TOKEN},
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
                "studies": args.studies,
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
