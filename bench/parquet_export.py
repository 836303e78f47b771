"""Parquet metadata export of a large archive: time, file sizes and peak memory (issue 14).

Storing a million objects through STOW-RS would take hours, so the index is filled directly
through nubis's own schema: ``--studies`` studies of ``--series`` series of ``--instances``
instances each (10,000 x 4 x 25 = 1,000,000 by default), each instance carrying the DICOM JSON
metadata of a real synthetic CT slice (nubis.tools.synth, 3.3 KB, its UIDs and slice thickness
varied), as ingest would have stored it. Then ``MetadataExport.parquet`` writes the identified
tables and the de-identified ones (the default profile), as ``nubis export metadata`` does.

    .venv/bin/python bench/parquet_export.py [--studies 10000] [--series 4] [--instances 25]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from nubis.deid.profile import load_default_profile  # noqa: E402
from nubis.index.database import Index  # noqa: E402
from nubis.index.schema import instances, series, studies  # noqa: E402
from nubis.security.policy import AuthPolicy, system_principal  # noqa: E402
from nubis.services.guard import Guard  # noqa: E402
from nubis.services.metadata_export import DeidTarget, MetadataExport  # noqa: E402
from nubis.tools import synth  # noqa: E402

BODY_PARTS = ["CHEST", "ABDOMEN", "HEAD", "PELVIS", "NECK", "KNEE"]
MODALITIES = ["CT", "CT", "CT", "MR", "PT"]
THICKNESS = [0.625, 1.0, 1.25, 2.5, 3.0, 5.0]
MANUFACTURERS = [("ACME", "Scan 64"), ("ACME", "Scan 128"), ("Imagix", "IX-3"), ("Radion", "R1")]


def _template() -> tuple[str, str, str]:
    ds = next(iter(synth.series_datasets("CT", n_instances=1)))
    del ds.PixelData
    text = json.dumps(ds.to_json_dict(), separators=(",", ":"))
    return text, str(ds.SOPInstanceUID), '"00180050":{"vr":"DS","Value":[1.25]}'


def fill(index: Index, n_studies: int, per_study: int, per_series: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    template, template_uid, thickness_element = _template()
    assert thickness_element in template
    now = int(time.time() * 1000)
    series_pk = instance_pk = 0
    batch = 500
    with index.write_engine.connect() as conn:
        for start in range(0, n_studies, batch):
            study_rows, series_rows, instance_rows = [], [], []
            for pk in range(start + 1, min(start + batch, n_studies) + 1):
                patient = rng.randrange(max(1, n_studies * 2 // 3))
                year, month = rng.randrange(2000, 2026), rng.randrange(1, 13)
                date = f"{year}{month:02d}{rng.randrange(1, 29):02d}"
                modality = rng.choice(MODALITIES)
                uid = f"1.2.826.0.1.3680043.10.1.{pk}"
                study_rows.append(
                    {
                        "id": pk,
                        "partition": "default",
                        "study_uid": uid,
                        "patient_id": f"PAT{patient:07d}",
                        "patient_name": f"NAME^{patient}",
                        "patient_name_folded": f"NAME^{patient}",
                        "patient_birth_date": "19600101",
                        "patient_sex": rng.choice("FM"),
                        "study_date": date,
                        "study_time": "101500",
                        "accession_number": f"A{pk:08d}",
                        "study_description": f"{modality} STUDY",
                        "study_id": str(pk),
                        "modalities": modality,
                        "num_series": per_study,
                        "num_instances": per_study * per_series,
                        "attrs": "{}",
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                for s in range(1, per_study + 1):
                    series_pk += 1
                    maker, model = rng.choice(MANUFACTURERS)
                    attrs = {
                        "00080060": {"vr": "CS", "Value": [modality]},
                        "00180015": {"vr": "CS", "Value": [rng.choice(BODY_PARTS)]},
                        "00080070": {"vr": "LO", "Value": [maker]},
                        "00081090": {"vr": "LO", "Value": [model]},
                    }
                    series_uid = f"{uid}.{s}"
                    series_rows.append(
                        {
                            "id": series_pk,
                            "study_pk": pk,
                            "series_uid": series_uid,
                            "modality": modality,
                            "series_number": s,
                            "series_description": "AXIAL",
                            "performed_date": date,
                            "num_instances": per_series,
                            "attrs": json.dumps(attrs),
                            "created_at": now,
                        }
                    )
                    thickness = rng.choice(THICKNESS)
                    body = template.replace(
                        thickness_element, f'"00180050":{{"vr":"DS","Value":[{thickness}]}}'
                    )
                    for n in range(1, per_series + 1):
                        instance_pk += 1
                        sop = f"{series_uid}.{n}"
                        instance_rows.append(
                            {
                                "id": instance_pk,
                                "series_pk": series_pk,
                                "partition": "default",
                                "sop_instance_uid": sop,
                                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                                "instance_number": n,
                                "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                                "rows": 512,
                                "columns": 512,
                                "bits_allocated": 16,
                                "blob_key": f"{instance_pk:032x}",
                                "size": 526_000 + n,
                                "sha256": "0" * 64,
                                "metadata_json": body.replace(template_uid, sop),
                                "created_at": now,
                            }
                        )
            with conn.begin():
                conn.execute(insert(studies), study_rows)
                conn.execute(insert(series), series_rows)
                conn.execute(insert(instances), instance_rows)
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return instance_pk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--series", type=int, default=4, help="series per study")
    parser.add_argument("--instances", type=int, default=25, help="instances per series")
    parser.add_argument("--keep", type=Path, help="fill (or reuse) the index in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        index_file = folder / "index.sqlite"
        fresh = not index_file.exists()
        index = Index(f"sqlite:///{index_file}", durable=False)
        index.migrate()
        if fresh:
            t0 = time.perf_counter()
            n = fill(index, args.studies, args.series, args.instances)
            print(f"filled {n} instances in {time.perf_counter() - t0:.1f}s", flush=True)
        index.open()
        exporter = MetadataExport(index, Guard(AuthPolicy(), None), default_tier="hot")
        who = system_principal("bench")
        for variant, target in (
            ("identified", None),
            ("de-identified", DeidTarget(load_default_profile(), b"bench project key 0123456789")),
        ):
            out = Path(tmp) / variant
            t0, cpu0 = time.perf_counter(), time.process_time()
            summary = exporter.parquet(who, out, deid=target)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            sizes = {p.name: p.stat().st_size for p in sorted(out.glob("*.parquet"))}
            rows = summary.rows["instances"]
            print(
                f"{variant}: {seconds:.1f}s ({cpu:.1f}s CPU), {rows / seconds:,.0f} instances/s; "
                + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items())
                + f"; rows {summary.rows}",
                flush=True,
            )
        index.close()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {peak:.0f} MB" + (" (filling included)" if fresh else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
