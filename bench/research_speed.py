"""The researcher's view and exports end to end (issue 14): instances per second reading one
study of 0.5 MB CT slices (512 x 512, 16-bit, ``nubis.tools.synth``) as an admin at
``/dicom-web`` and as a researcher at ``/projects/{name}/dicom-web`` (de-identified on the
fly), and exporting the project into a folder (the ``research-export`` job's handler), side by
side; in one process (Starlette's TestClient: blob reads, decryption, audit and HTTP framing
included, no socket), the variants alternating round by round; wall time.

    .venv/bin/python bench/research_speed.py [--instances 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token-0123456789abcdef0123"
WHOLE = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100, help="CT slices in the study")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per variant")
    return parser.parse_args()


def main() -> None:
    args = _args()
    sys.path.insert(0, str(ROOT / "src"))
    from starlette.testclient import TestClient

    from nubis.archive import Archive
    from nubis.config import load_settings
    from nubis.deid.profile import default_profile_text
    from nubis.jobs.context import JobContext
    from nubis.security.policy import Principal
    from nubis.services.research_export import KIND, ResearchExport
    from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets
    from nubis.web.app import create_app

    tmp = Path(tempfile.mkdtemp(prefix="nubis-research-bench-"))
    settings = load_settings(
        environ={},
        overrides={
            "data_dir": str(tmp / "data"),
            "durable": "false",
            "admin_token": ADMIN_TOKEN,
            "dimse_port": "0",
            "log_level": "warning",
        },
    )
    archive = Archive(settings)
    admin = Principal("admin", "default", frozenset({"admin"}))
    n = args.instances
    try:
        with TestClient(create_app(archive)) as client:
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            datasets = list(
                series_datasets("CT", n_instances=n, patient=PatientSpec("BENCH-1", "Bench^B"))
            )
            body = b"".join(
                b"--b\r\nContent-Type: application/dicom\r\n\r\n" + dataset_bytes(d) + b"\r\n"
                for d in datasets
            )
            stored = client.post(
                "/dicom-web/studies",
                content=body + b"--b--\r\n",
                headers={
                    **auth,
                    "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
                },
            )
            assert stored.status_code == 200, stored.text
            study = str(datasets[0].StudyInstanceUID)
            archive.users.add_user("bench-researcher", tenant="default", roles="researcher")
            key = archive.users.create_api_key("bench-researcher")[1]
            research = archive.research
            research.create(
                admin,
                "bench",
                default_profile_text(),
                study_uids=(study,),
                members=("bench-researcher",),
            )
            remapped = research.key_of(research.show(admin, "bench")).pseudonyms().uid(study)
            researcher = {"Authorization": f"Bearer {key}"}
            project = f"/projects/bench/dicom-web/studies/{remapped}"

            def get(url: str, headers: dict[str, str]) -> None:
                response = client.get(url, headers=headers)
                assert response.status_code == 200, response.text[:300]

            def export() -> None:
                out = tmp / "export"
                shutil.rmtree(out, ignore_errors=True)
                params = {"project": "bench", "tenant": "default", "to": str(out)}
                job_id = archive.jobs.enqueue(KIND, params)
                job = archive.jobs.get(job_id) if job_id is not None else None
                assert job is not None
                ResearchExport(research, archive.retrieve, admin).run(
                    JobContext(job, threading.Event())
                )

            variants: dict[str, Callable[[], None]] = {
                "WADO-RS study, plain": lambda: get(
                    f"/dicom-web/studies/{study}", {**auth, "Accept": WHOLE}
                ),
                "WADO-RS study, researcher": lambda: get(project, {**researcher, "Accept": WHOLE}),
                "export to a folder": export,
                "metadata, plain": lambda: get(f"/dicom-web/studies/{study}/metadata", auth),
                "metadata, researcher": lambda: get(project + "/metadata", researcher),
            }
            for run in variants.values():  # warm-up
                run()
            timings: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.rounds):
                for name, run in variants.items():
                    started = time.perf_counter()
                    run()
                    timings[name].append(time.perf_counter() - started)
        print(f"{n} instances of {len(dataset_bytes(datasets[0])):,} bytes, {args.rounds} rounds")
        for name, seconds in timings.items():
            print(f"{name:28s} {n / statistics.median(seconds):8.0f} instances/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
