"""Reads from a tier that needs a restore, seen from the DICOMweb front door (in-process).

The S3 store turns AWS's 403 InvalidObjectState into RestoreRequired after asking for a
restore (tests/unit/test_blobs_s3.py); here the blob store answers RestoreRequired for every
read, and every kind of retrieval answers 503 with that reason: never bytes, never a 500. The
read is still recorded as one (the rules then bring the study back to the first tier).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from nubis.archive import Archive
from nubis.config import load_settings
from nubis.errors import RestoreRequired
from nubis.index.schema import study_lifecycle
from nubis.security.policy import system_principal
from nubis.tools.synth import make_ct_series
from nubis.web.app import create_app

REASON = "the object is in archive storage; a restore was requested: retry in a few hours"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[tuple[TestClient, Archive, str]]:
    settings = load_settings(
        environ={},
        overrides={"data_dir": str(tmp_path / "data"), "durable": "false", "auth": "false"},
    )
    archive = Archive(settings)
    with TestClient(create_app(archive)) as client:
        [path] = make_ct_series(tmp_path / "ct", n_instances=1, rows=16, columns=16)
        outcome = archive.store.store(archive.spool.from_file(path), principal=system_principal())
        assert outcome.ok
        yield client, archive, outcome.study_uid or ""


def test_archived_objects_answer_503_with_the_restore_reason(
    client: tuple[TestClient, Archive, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, archive, study = client

    def archived(*_: object, **__: object) -> None:
        raise RestoreRequired(REASON)

    for method in ("read", "iter_chunks", "open"):
        monkeypatch.setattr(archive.blobs, method, archived)
    [inst] = archive.retrieve.instances(system_principal(), study)
    base = f"/dicom-web/studies/{study}/series/{inst.series_uid}/instances/{inst.sop_instance_uid}"
    for url, accept in (
        (f"/dicom-web/studies/{study}", 'multipart/related; type="application/dicom"'),
        (base, 'multipart/related; type="application/dicom"'),
        (base + "/frames/1", 'multipart/related; type="application/octet-stream"'),
        (base + "/bulk/7FE00010", "application/octet-stream"),
        (base + "/bulk/7FE00010", 'multipart/related; type="application/octet-stream"'),
        (base + "/rendered", "image/png"),
        (
            f"/wado?requestType=WADO&studyUID={study}&seriesUID={inst.series_uid}"
            f"&objectUID={inst.sop_instance_uid}&contentType=application/dicom",
            "application/dicom",
        ),
    ):
        response = http.get(url, headers={"Accept": accept})
        assert response.status_code == 503, (url, response.status_code, response.text[:200])
        assert response.json()["reason"] == REASON
        # RFC 9110 10.2.3: how long to wait; a restore takes minutes to hours.
        assert response.headers["retry-after"] == "300"
    # Metadata lives in the index: served whatever the tier.
    assert http.get(f"/dicom-web/studies/{study}/metadata").status_code == 200
    archive.reads.flush()
    with archive.index.reading() as conn:
        assert conn.execute(select(study_lifecycle.c.last_read_at)).scalar_one() is not None
