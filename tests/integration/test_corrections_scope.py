"""Who sees a corrected study (issue 12; docs/corrections.md, docs/security.md).

Grants name a patient or a study; the scope of a grant-limited reader is part of the SQL and
follows the study row's Patient ID, which a correction changes. So a referrer granted only the
old patient stops seeing a study moved away (404, absent from QIDO-RS: out of scope equals
absent), one granted the new patient sees it, and one granted only the moved study keeps that
study without seeing the new patient's others. Only admins may correct (403 otherwise, recorded
as Use of Restricted Function). A late object of the moved study, still carrying the Patient ID
it was stored with, is accepted into it and served corrected.

The archive runs in-process (Starlette's TestClient) with the real services, index, blob store
(encrypted at rest) and audit trail.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pydicom
import pytest
from starlette.testclient import TestClient

from integration import in_process_archive
from nubis.archive import Archive
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "scope-test-admin-token-0123456789abcdef01"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'


@dataclass
class World:
    client: TestClient
    archive: Archive
    keys: dict[str, str]
    seed: int = 4000

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def make(self, patient: str, name: str, *, study_uid: str | None = None) -> pydicom.Dataset:
        self.seed += 1
        spec = synth.PatientSpec(patient, name, "19600101", "M")
        ds = next(
            synth.series_datasets(
                "CT", n_instances=1, rows=32, columns=32, seed=self.seed, patient=spec
            )
        )
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        return ds

    def store(self, ds: pydicom.Dataset) -> httpx.Response:
        body = (
            b"--b\r\nContent-Type: application/dicom\r\n\r\n"
            + synth.dataset_bytes(ds)
            + b"\r\n--b--\r\n"
        )
        return self.client.post(
            "/dicom-web/studies",
            content=body,
            headers={**self.auth("admin"), "Content-Type": DICOM_TYPE},
        )

    def visible(self, who: str, study_uid: str) -> bool:
        """Whether ``who`` reads the study's metadata (200) or finds it absent (404)."""
        answer = self.client.get(f"/dicom-web/studies/{study_uid}/metadata", headers=self.auth(who))
        assert answer.status_code in (200, 404), answer.text
        return answer.status_code == 200

    def found(self, who: str) -> set[str]:
        answer = self.client.get("/dicom-web/studies", headers=self.auth(who))
        assert answer.status_code == 200, answer.text
        return {s["0020000D"]["Value"][0] for s in answer.json()}

    def correct(self, who: str, body: dict[str, object]) -> httpx.Response:
        return self.client.post("/corrections", json=body, headers=self.auth(who))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    archive = in_process_archive(tmp_path_factory.mktemp("scope") / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        keys = {"admin": ADMIN}
        for name, role in (
            ("ref-old", "referrer"),
            ("ref-new", "referrer"),
            ("ref-study", "referrer"),
            ("radiologist", "radiologist"),
        ):
            archive.users.add_user(name, tenant="default", roles=role)
            keys[name] = archive.users.create_api_key(name)[1]
        archive.users.grant("ref-old", tenant="default", patient_id="SCOPE-OLD")
        archive.users.grant("ref-new", tenant="default", patient_id="SCOPE-NEW")
        yield World(client, archive, keys)


def test_a_moved_study_follows_its_new_patient(world: World) -> None:
    moved = world.make("SCOPE-OLD", "Old^Owner")
    kept = world.make("SCOPE-OLD", "Old^Owner")
    others = world.make("SCOPE-NEW", "New^Owner")
    for ds in (moved, kept, others):
        assert world.store(ds).status_code == 200
    moved_uid, kept_uid, other_uid = (str(d.StudyInstanceUID) for d in (moved, kept, others))
    world.archive.users.grant("ref-study", tenant="default", study_uid=moved_uid)
    assert world.found("ref-old") == {moved_uid, kept_uid}
    assert world.found("ref-study") == {moved_uid}

    answer = world.correct(
        "admin",
        {"action": "move-study", "study": moved_uid, "to_patient": "SCOPE-NEW",
         "reason": "filed under the wrong patient"},
    )  # fmt: skip
    assert answer.status_code == 201, answer.text

    # Granted the old patient only: the moved study is gone, as if it did not exist.
    assert world.found("ref-old") == {kept_uid}
    assert not world.visible("ref-old", moved_uid)
    # Granted the new patient: the study is theirs now, with the new patient's name.
    assert world.found("ref-new") == {moved_uid, other_uid}
    metadata = world.client.get(
        f"/dicom-web/studies/{moved_uid}/metadata", headers=world.auth("ref-new")
    ).json()
    assert metadata[0]["00100010"]["Value"][0]["Alphabetic"] == "New^Owner"
    assert metadata[0]["00100020"]["Value"][0] == "SCOPE-NEW"
    # Granted the study alone: still that study, never the new patient's others.
    assert world.found("ref-study") == {moved_uid}
    assert not world.visible("ref-study", other_uid)

    # The object (encrypted under the key of the patient it arrived with) is still readable.
    whole = world.client.get(
        f"/dicom-web/studies/{moved_uid}",
        headers={**world.auth("ref-new"), "Accept": 'multipart/related; type="application/dicom"'},
    )
    assert whole.status_code == 200 and b"SCOPE-NEW" in whole.content
    assert b"SCOPE-OLD" not in whole.content
    # The web face's ZIP export carries the corrected object too.
    zipped = world.client.get(f"/ui/studies/{moved_uid}/download", headers=world.auth("ref-new"))
    assert zipped.status_code == 200, zipped.text[:200]
    with zipfile.ZipFile(io.BytesIO(zipped.content)) as archive:
        (name,) = archive.namelist()
        exported = pydicom.dcmread(io.BytesIO(archive.read(name)))
    assert (exported.PatientID, str(exported.PatientName)) == ("SCOPE-NEW", "New^Owner")

    # A late object of the study, still carrying the Patient ID it was stored with, joins
    # it and is served corrected; another patient's object is still refused (0xA900).
    late = world.make("SCOPE-OLD", "Old^Owner", study_uid=moved_uid)
    assert world.store(late).status_code == 200
    metadata = world.client.get(
        f"/dicom-web/studies/{moved_uid}/metadata", headers=world.auth("admin")
    ).json()
    assert {m["00100020"]["Value"][0] for m in metadata} == {"SCOPE-NEW"} and len(metadata) == 2
    stranger = world.make("SCOPE-THIRD", "Third^Person", study_uid=moved_uid)
    assert world.store(stranger).status_code == 409


def test_only_admins_correct(world: World) -> None:
    """A radiologist (read and write) and a referrer may not correct or list corrections:
    403, whatever the study (the action is refused before the resource is looked at)."""
    ds = world.make("SCOPE-ADMIN", "Only^Admins")
    assert world.store(ds).status_code == 200
    body = {"action": "update-study", "study": str(ds.StudyInstanceUID),
            "set": {"PatientName": "X^Y"}, "reason": "not allowed"}  # fmt: skip
    for who in ("radiologist", "ref-old"):
        assert world.correct(who, body).status_code == 403
        assert world.client.get("/corrections", headers=world.auth(who)).status_code == 403
        assert world.client.post("/corrections/1/undo", json={"reason": "x"},
                                 headers=world.auth(who)).status_code == 403  # fmt: skip
    assert world.found("admin") >= {str(ds.StudyInstanceUID)}
    names = world.client.get(
        "/dicom-web/studies",
        params={"StudyInstanceUID": str(ds.StudyInstanceUID)},
        headers=world.auth("admin"),
    ).json()
    assert names[0]["00100010"]["Value"][0]["Alphabetic"] == "Only^Admins"
