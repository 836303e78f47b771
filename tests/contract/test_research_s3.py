"""A research project exported into an S3 bucket (Ceph RGW, the session's; issue 14): the same
de-identified objects as a folder export, under the remapped UIDs, with the manifest; a resumed
export sends nothing again (docs/research.md)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from contract import Ceph
from integration import ADMIN_TOKEN, in_process_archive
from nubis.archive import Archive
from nubis.deid.profile import default_profile_text
from nubis.jobs.context import JobContext
from nubis.security.policy import Principal
from nubis.services.research_export import KIND, ResearchExport
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets
from nubis.web.app import create_app

ADMIN = Principal("admin", "default", frozenset({"admin"}))


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = in_process_archive(tmp_path_factory.mktemp("research-s3") / "data", ADMIN_TOKEN)
    with TestClient(create_app(archive)) as client:
        datasets = series_datasets(
            "CT", n_instances=3, rows=16, columns=16, patient=PatientSpec("PAT-S3-1", "Bucket^Ben")
        )
        body = b"".join(
            b"--b\r\nContent-Type: application/dicom\r\n\r\n" + dataset_bytes(ds) + b"\r\n"
            for ds in datasets
        )
        response = client.post(
            "/dicom-web/studies",
            content=body + b"--b--\r\n",
            headers={
                "Authorization": f"Bearer {ADMIN_TOKEN}",
                "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
            },
        )
        assert response.status_code == 200, response.text
        archive.research.create(ADMIN, "s3", default_profile_text(), cohort_query="Modality=CT")
        yield archive


def _run(archive: Archive, **params: str) -> None:
    job_id = archive.jobs.enqueue(KIND, {"project": "s3", "tenant": "default", **params})
    assert job_id is not None
    job = archive.jobs.get(job_id)
    assert job is not None
    ResearchExport(archive.research, archive.retrieve, ADMIN).run(
        JobContext(job, threading.Event())
    )


def test_export_into_a_bucket(archive: Archive, ceph: Ceph, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    _run(archive, to=str(folder))
    url = ceph.url("research-export", tls=True)
    _run(archive, s3=url, manifest=str(tmp_path / "m1"))
    client = ceph.client()

    def bucket() -> dict[str, bytes]:
        listed = client.list_objects_v2(Bucket=ceph.bucket, Prefix="research-export/")
        return {
            item["Key"].removeprefix("research-export/"): client.get_object(
                Bucket=ceph.bucket, Key=item["Key"]
            )["Body"].read()
            for item in listed.get("Contents", ())
        }

    first = bucket()
    local = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert first == local  # objects and manifest, byte for byte
    # Again into the same prefix (a resumed or repeated export): the bucket is unchanged.
    _run(archive, s3=url, manifest=str(tmp_path / "m2"))
    assert bucket() == first
