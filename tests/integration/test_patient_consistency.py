"""One study, one patient; one series, one study (issue 9, item 1; docs/security.md).

A hostile review stored an object with PatientID=PAT-EVIL under the Study Instance UID of
PAT-A's study. It was accepted, so a referrer granted PAT-A read PAT-EVIL's object, a referrer
granted PAT-EVIL could not, and QIDO by PatientID=PAT-EVIL found nothing: grants and
patient-level queries follow the study row, which keeps its first patient. Such an object is
now refused, 409 with FailureReason 0xA900 (PS3.18 Table 10.5.3-1: the data set does not fit
what is stored), and nothing of it is kept; the same for a series stored under a second study.
The C-STORE side is in test_dimse_store.py.

With ``patient_conflict = quarantine`` (issue 12, for migrations) both are stored instead, under
their own study, held in quarantine until an admin releases it (the service, the HTTP API
``/quarantine`` and, here too, C-STORE from dcmtk's storescu).

The archive runs in-process (Starlette's TestClient) with the real services, index, blob store
and audit trail.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from starlette.testclient import TestClient

from integration import in_process_archive
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import free_port, need_dcmtk, run
from nubis.archive import Archive
from nubis.errors import Forbidden
from nubis.security.policy import Principal, system_principal
from nubis.services.quarantine import StudyStillDisagrees
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "patient-test-admin-token-0123456789abcdef"
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'
MISMATCH = 0xA900


@dataclass
class World:
    client: TestClient
    archive: Archive
    keys: dict[str, str]
    tmp: Path
    counter: int = 0
    dimse_port: int = 0

    def make(
        self,
        patient: str | None,
        *,
        study_uid: str | None = None,
        series_uid: str | None = None,
    ) -> pydicom.Dataset:
        self.counter += 1
        ds = next(
            synth.series_datasets(
                "CT",
                n_instances=1,
                seed=900 + self.counter,
                patient=synth.PatientSpec(patient or "X", "Doe^Jo", "19700101", "F"),
            )
        )
        if patient is None:
            del ds.PatientID
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        if series_uid is not None:
            ds.SeriesInstanceUID = series_uid
        return ds

    def store(self, who: str, ds: pydicom.Dataset) -> httpx.Response:
        body = (
            b"--b\r\nContent-Type: application/dicom\r\n\r\n"
            + synth.dataset_bytes(ds)
            + b"\r\n--b--\r\n"
        )
        return self.client.post(
            "/dicom-web/studies",
            content=body,
            headers={**self.auth(who), "Content-Type": DICOM_TYPE},
        )

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def study_patients(self, who: str, study_uid: str) -> list[str]:
        """The Patient ID of every instance ``who`` reads in the study's metadata."""
        response = self.client.get(
            f"/dicom-web/studies/{study_uid}/metadata", headers=self.auth(who)
        )
        if response.status_code == 404:
            return []
        assert response.status_code == 200, response.text
        return [item.get("00100020", {}).get("Value", [""])[0] for item in response.json()]

    def studies_of(self, who: str, patient_id: str) -> list[str]:
        response = self.client.get(
            "/dicom-web/studies", params={"PatientID": patient_id}, headers=self.auth(who)
        )
        assert response.status_code in (200, 204), response.text
        return [s["0020000D"]["Value"][0] for s in response.json()] if response.content else []


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("patients")
    archive = in_process_archive(tmp / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        users = archive.users
        keys = {"admin": ADMIN}
        for name, tenant, role in (
            ("uploader", "default", "uploader"),
            ("ref-a", "default", "referrer"),
            ("ref-evil", "default", "referrer"),
            ("other-admin", "other", "admin"),
        ):
            users.add_user(name, tenant=tenant, roles=role)
            keys[name] = users.create_api_key(name)[1]
        users.grant("ref-a", tenant="default", patient_id="PAT-A")
        users.grant("ref-evil", tenant="default", patient_id="PAT-EVIL")
        yield World(client, archive, keys, tmp)


def _failure(response: httpx.Response) -> tuple[int, str]:
    """(FailureReason, the Warning header) of a STOW-RS response refusing its one object."""
    assert response.status_code == 409, response.text
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 1
    return failed[0]["00081197"]["Value"][0], response.headers.get("warning", "")


def test_another_patient_is_refused_under_a_stored_study(world: World) -> None:
    original = world.make("PAT-A")
    assert world.store("admin", original).status_code == 200
    study = str(original.StudyInstanceUID)

    for series_uid in (None, str(original.SeriesInstanceUID)):  # a new series, the same series
        evil = world.make("PAT-EVIL", study_uid=study, series_uid=series_uid)
        reason, warning = _failure(world.store("uploader", evil))
        assert reason == MISMATCH
        assert "belongs to another patient (0010,0020)" in warning
        # Neither patient's ID reaches a sender who may not read either of them.
        assert "PAT-A" not in warning and "PAT-EVIL" not in warning

    assert world.study_patients("admin", study) == ["PAT-A"]
    assert world.study_patients("ref-a", study) == ["PAT-A"]
    assert world.study_patients("ref-evil", study) == []
    assert world.studies_of("admin", "PAT-EVIL") == []
    assert world.studies_of("admin", "PAT-A") == [study]


def test_a_missing_patient_id_is_another_patient(world: World) -> None:
    with_id = world.make("PAT-B")
    assert world.store("admin", with_id).status_code == 200
    anonymous = world.make(None, study_uid=str(with_id.StudyInstanceUID))
    assert _failure(world.store("admin", anonymous))[0] == MISMATCH

    without_id = world.make(None)
    assert world.store("admin", without_id).status_code == 200
    named = world.make("PAT-B", study_uid=str(without_id.StudyInstanceUID))
    assert _failure(world.store("admin", named))[0] == MISMATCH
    # An empty Patient ID is the same patient as a missing one (PS3.5 7.4: type 2, zero length).
    empty = world.make(None, study_uid=str(without_id.StudyInstanceUID))
    empty.PatientID = ""
    assert world.store("admin", empty).status_code == 200


def test_the_same_patient_adds_series_and_instances(world: World) -> None:
    first = world.make("PAT-C")
    assert world.store("uploader", first).status_code == 200
    study = str(first.StudyInstanceUID)
    second_series = world.make("PAT-C", study_uid=study)
    same_series = world.make("PAT-C", study_uid=study, series_uid=str(first.SeriesInstanceUID))
    assert world.store("uploader", second_series).status_code == 200
    assert world.store("uploader", same_series).status_code == 200
    assert world.study_patients("admin", study) == ["PAT-C"] * 3


def test_a_series_is_not_moved_to_another_study(world: World) -> None:
    original = world.make("PAT-D")
    assert world.store("admin", original).status_code == 200
    series_uid = str(original.SeriesInstanceUID)
    # Into another stored study of the same patient, and into a study that is not stored yet.
    other = world.make("PAT-D")
    assert world.store("admin", other).status_code == 200
    for study_uid in (str(other.StudyInstanceUID), synth.synth_uid(991, "new-study")):
        moved = world.make("PAT-D", study_uid=study_uid, series_uid=series_uid)
        reason, warning = _failure(world.store("admin", moved))
        assert reason == MISMATCH
        assert f"the series belongs to another study: series {series_uid}" in warning
        assert str(original.StudyInstanceUID) not in warning
    new_study = synth.synth_uid(991, "new-study")
    assert (
        world.client.get(
            f"/dicom-web/studies/{new_study}/metadata", headers=world.auth("admin")
        ).status_code
        == 404
    )
    response = world.client.get(
        "/dicom-web/series", params={"SeriesInstanceUID": series_uid}, headers=world.auth("admin")
    )
    assert [s["0020000D"]["Value"][0] for s in response.json()] == [str(original.StudyInstanceUID)]


def test_tenants_hold_their_own_study_of_one_uid(world: World) -> None:
    """A tenant is a partition: the same Study Instance UID stored in another tenant is a study
    of that tenant, with its own patient, and changes nothing in the first one."""
    original = world.make("PAT-E")
    assert world.store("admin", original).status_code == 200
    study = str(original.StudyInstanceUID)
    foreign = world.make("PAT-EVIL", study_uid=study, series_uid=str(original.SeriesInstanceUID))
    assert world.store("other-admin", foreign).status_code == 200

    assert world.study_patients("admin", study) == ["PAT-E"]
    assert world.study_patients("other-admin", study) == ["PAT-EVIL"]
    assert world.studies_of("admin", "PAT-EVIL") == []
    assert world.studies_of("other-admin", "PAT-EVIL") == [study]


def test_a_refused_object_is_audited_and_leaves_no_blob(world: World) -> None:
    original = world.make("PAT-F")
    assert world.store("admin", original).status_code == 200
    blobs_before = _blob_count(world)
    evil = world.make("PAT-EVIL", study_uid=str(original.StudyInstanceUID))
    assert _failure(world.store("uploader", evil))[0] == MISMATCH
    assert _blob_count(world) == blobs_before
    response = world.client.get(
        "/audit/records", params={"user": "uploader", "limit": 1000}, headers=world.auth("admin")
    )
    assert response.status_code == 200, response.text
    events = [r["event"] for r in response.json()["records"]]
    refused = [e for e in events if "another patient" in json.dumps(e)]
    assert refused, "the refused store left no audit record"


def _blob_count(world: World) -> int:
    root = world.tmp / "data" / "blobs"
    return sum(1 for p in root.rglob("*") if p.is_file() and len(p.name) == 32)


# ------------------------------------------------------------------ quarantine (issue 12)
@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """An archive migrating an old one: patient_conflict = quarantine."""
    tmp = tmp_path_factory.mktemp("quarantine")
    port = free_port()
    archive = in_process_archive(
        tmp / "data", ADMIN, patient_conflict="quarantine", dimse_port=str(port)
    )
    with TestClient(create_app(archive, dimse=True)) as client:
        users = archive.users
        keys = {"admin": ADMIN}
        for name, role in (
            ("uploader", "uploader"),
            ("radiologist", "radiologist"),
            ("ref-a", "referrer"),
            ("ref-b", "referrer"),
        ):
            users.add_user(name, tenant="default", roles=role)
            keys[name] = users.create_api_key(name)[1]
        users.grant("ref-a", tenant="default", patient_id="PAT-QA")
        users.grant("ref-b", tenant="default", patient_id="PAT-QB")
        yield World(client, archive, keys, tmp, dimse_port=port)


def test_a_study_of_two_patients_is_held_in_quarantine(held: World) -> None:
    """With patient_conflict = quarantine, an object naming another patient under a stored
    study is stored (202, Warning Reason 0xB007, PS3.18 10.5.3) and its study held: nothing is
    lost (an admin reads both instances), nobody else sees the study (not the referrer granted
    either patient, not a radiologist of the tenant), the storage report names it, and a
    release lets it out once its instances agree, audited."""
    original = held.make("PAT-QA")
    assert held.store("admin", original).status_code == 200
    study = str(original.StudyInstanceUID)
    assert held.study_patients("radiologist", study) == ["PAT-QA"]

    other = held.make("PAT-QB", study_uid=study)
    response = held.store("uploader", other)
    assert response.status_code == 202, response.text
    [item] = response.json()["00081199"]["Value"]
    assert item["00081196"]["Value"] == [0xB007]
    warning = response.headers["warning"]
    assert "held in quarantine" in warning
    assert "PAT-QA" not in warning and "PAT-QB" not in warning

    assert sorted(held.study_patients("admin", study)) == ["PAT-QA", "PAT-QB"]
    for who in ("radiologist", "ref-a", "ref-b"):
        assert held.study_patients(who, study) == [], who
        assert held.studies_of(who, "PAT-QA") == [] and held.studies_of(who, "PAT-QB") == []
    assert held.studies_of("admin", "PAT-QA") == [study]

    admin = system_principal(tenant="default")
    service = held.archive.quarantine
    [listed] = service.held(admin)
    assert (listed.study_uid, listed.instances) == (study, 2)
    assert service.patients_of(admin, study) == {"PAT-QA": 1, "PAT-QB": 1}
    with pytest.raises(StudyStillDisagrees):
        service.release(admin, study, reason="not yet")
    with pytest.raises(Forbidden):
        service.held(Principal("radiologist", "default", frozenset({"radiologist"})))

    # The instance filed under the wrong study is removed (a correction would re-file it).
    held.archive.maintenance.delete(
        admin, study, str(other.SeriesInstanceUID), str(other.SOPInstanceUID)
    )
    service.release(admin, study, reason="the PAT-QB instance was re-filed")
    assert service.held(admin) == []
    assert held.study_patients("radiologist", study) == ["PAT-QA"]
    assert held.study_patients("ref-a", study) == ["PAT-QA"]
    assert held.study_patients("ref-b", study) == []


def test_a_release_as_resolved_does_not_check_the_patients(held: World) -> None:
    """A correction applied on output makes the instances agree as served, not as stored:
    its service releases the study as resolved."""
    original = held.make("PAT-QA")
    assert held.store("admin", original).status_code == 200
    study = str(original.StudyInstanceUID)
    assert held.store("admin", held.make("PAT-QB", study_uid=study)).status_code == 202
    admin = system_principal(tenant="default")
    held.archive.quarantine.release(admin, study, reason="merged", resolved=True)
    assert len(held.study_patients("radiologist", study)) == 2


def test_a_release_gives_the_study_to_the_patient_its_instances_agree_on(held: World) -> None:
    """When the instance the study row took its patient from was the odd one, the release
    makes the row follow the instances that remain: grants and patient queries then find the
    study under their patient, not the removed one's."""
    odd = held.make("PAT-QB")
    assert held.store("admin", odd).status_code == 200
    study = str(odd.StudyInstanceUID)
    for _ in range(2):
        assert held.store("admin", held.make("PAT-QA", study_uid=study)).status_code == 202
    admin = system_principal(tenant="default")
    held.archive.maintenance.delete(
        admin, study, str(odd.SeriesInstanceUID), str(odd.SOPInstanceUID)
    )
    held.archive.quarantine.release(admin, study, reason="the odd instance was removed")
    assert held.study_patients("ref-a", study) == ["PAT-QA", "PAT-QA"]
    assert held.study_patients("ref-b", study) == []
    assert held.studies_of("radiologist", "PAT-QA").count(study) == 1
    assert study not in held.studies_of("radiologist", "PAT-QB")


def test_a_correction_releases_a_quarantined_study(held: World) -> None:
    """The flow issue 12 asks for: a study held for two patients is moved by a correction to
    one of them (nubis.services.corrections: an overlay on output); the release then counts
    the Patient ID its objects were stored with as agreeing, and every instance is served as
    the corrected patient, to whoever is granted that patient only."""
    original = held.make("PAT-QA")
    assert held.store("admin", original).status_code == 200
    study = str(original.StudyInstanceUID)
    assert held.store("admin", held.make("PAT-QB", study_uid=study)).status_code == 202
    admin = system_principal(tenant="default")
    held.archive.corrections.move_study(admin, study, "PAT-QB", reason="merged at the source")
    held.archive.quarantine.release(admin, study, reason="moved to PAT-QB by a correction")
    assert held.study_patients("ref-b", study) == ["PAT-QB", "PAT-QB"]
    assert held.study_patients("ref-a", study) == []


def _held_studies(world: World, who: str = "admin") -> dict[str, dict[str, object]]:
    response = world.client.get("/quarantine", headers=world.auth(who))
    assert response.status_code == 200, response.text
    return {s["study_uid"]: s for s in response.json()["studies"]}


def _series_studies(world: World, who: str, series_uid: str) -> list[str]:
    response = world.client.get(
        "/dicom-web/series", params={"SeriesInstanceUID": series_uid}, headers=world.auth(who)
    )
    assert response.status_code in (200, 204), response.text
    return sorted(s["0020000D"]["Value"][0] for s in response.json()) if response.content else []


def test_a_series_of_another_study_is_held_under_its_own_study(held: World) -> None:
    """Issue 12: with quarantine on, an object whose Series Instance UID another study holds
    is stored (202, Warning Reason 0xB007, PS3.18 10.5.3), byte-exact, under its own study,
    which is held for ``series-conflict``: nobody granted either patient sees it, the study
    holding the series first is unchanged for its readers, and the warning names neither the
    other study nor a patient. A release waits until the series has one study, or is told the
    reused UID names two series (resolved); then each study is seen by its own patient's
    grantees only."""
    original = held.make("PAT-QA")
    assert held.store("admin", original).status_code == 200
    series_uid = str(original.SeriesInstanceUID)
    moved = held.make("PAT-QB", series_uid=series_uid)
    study = str(moved.StudyInstanceUID)
    response = held.store("uploader", moved)
    assert response.status_code == 202, response.text
    [item] = response.json()["00081199"]["Value"]
    assert item["00081196"]["Value"] == [0xB007]
    warning = response.headers["warning"]
    assert "series belongs to another study" in warning and "held in quarantine" in warning
    assert str(original.StudyInstanceUID) not in warning and "PAT-Q" not in warning
    stored = held.client.get(
        f"/dicom-web/studies/{study}", headers={**held.auth("admin"), "Accept":
        'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )  # fmt: skip
    assert stored.status_code == 200 and synth.dataset_bytes(moved) in stored.content

    assert _held_studies(held)[study]["reasons"] == ["series-conflict"]
    assert _series_studies(held, "admin", series_uid) == sorted(
        [str(original.StudyInstanceUID), study]
    )
    for who in ("radiologist", "ref-a", "ref-b"):
        assert held.study_patients(who, study) == [], who
    assert _series_studies(held, "ref-a", series_uid) == [str(original.StudyInstanceUID)]
    assert _series_studies(held, "ref-b", series_uid) == []

    url = f"/quarantine/{study}/release"
    refused = held.client.post(url, json={"reason": "check"}, headers=held.auth("admin"))
    assert refused.status_code == 409 and "Series Instance UID" in refused.text
    released = held.client.post(
        url, json={"reason": "the source reused the UID", "resolved": True},
        headers=held.auth("admin"),
    )  # fmt: skip
    assert released.status_code == 200, released.text
    assert released.json()["reasons"] == ["series-conflict"]
    assert held.study_patients("ref-b", study) == ["PAT-QB"]
    assert held.study_patients("ref-a", study) == []
    assert _series_studies(held, "ref-a", series_uid) == [str(original.StudyInstanceUID)]


def test_the_quarantine_api(held: World) -> None:
    """``GET /quarantine`` and ``POST /quarantine/{study}/release`` (admins of the tenant):
    the list says why and with which patients; bad input is a 4xx naming what is wrong; a
    release goes through the quarantine service and is recorded like the CLI's (Instances
    Accessed, Update, with the reason)."""
    original = held.make("PAT-QA")
    assert held.store("admin", original).status_code == 200
    study = str(original.StudyInstanceUID)
    assert held.store("admin", held.make("PAT-QB", study_uid=study)).status_code == 202
    listed = _held_studies(held)[study]
    assert (listed["reasons"], listed["instances"]) == (["patient-conflict"], 2)
    assert listed["patients"] == {"PAT-QA": 1, "PAT-QB": 1}

    url = f"/quarantine/{study}/release"
    for who in ("radiologist", "ref-a"):
        assert held.client.get("/quarantine", headers=held.auth(who)).status_code == 403
        response = held.client.post(url, json={"reason": "x"}, headers=held.auth(who))
        assert response.status_code == 403
    admin = held.auth("admin")
    for body, status, says in (
        (b"{not json", 400, "JSON object"),
        (b"[]", 400, "JSON object"),
        (b"{}", 400, "'reason' is required"),
        (b'{"reason": "x", "resolved": "yes"}', 400, "'resolved'"),
        (b'{"reason": "not yet"}', 409, "Patient IDs"),
    ):
        response = held.client.post(url, content=body, headers=admin)
        assert (response.status_code, says in response.text) == (status, True), response.text
        assert "PAT-Q" not in response.text
    unknown = held.client.post(
        f"/quarantine/{synth.synth_uid(992, 'x')}/release", json={"reason": "x"}, headers=admin
    )
    assert unknown.status_code == 404 and "not held in quarantine" in unknown.text
    bad_uid = held.client.post("/quarantine/1.2.xyz/release", json={"reason": "x"}, headers=admin)
    assert bad_uid.status_code == 400

    held.archive.corrections.move_study(
        system_principal(tenant="default"), study, "PAT-QB", reason="merged at the source"
    )
    response = held.client.post(url, json={"reason": "moved by a correction"}, headers=admin)
    assert response.status_code == 200, response.text
    assert study not in _held_studies(held)
    records = held.client.get(
        "/audit/records", params={"user": "admin", "limit": 1000}, headers=admin
    ).json()["records"]
    assert any(
        "released from quarantine: moved by a correction" in json.dumps(r["event"])
        for r in records
    )


def test_c_store_of_a_series_of_another_study_is_held(held: World, tmp_path: Path) -> None:
    """The same through DIMSE with quarantine on: dcmtk's storescu gets warning 0xB007 (PS3.4
    B.2.3) for the object of a series another study holds, and the object is held under its
    own study (the refusal, with quarantine off, is in test_dimse_store.py)."""
    need_dcmtk("storescu")
    original = held.make("PAT-QA")
    moved = held.make("PAT-QB", series_uid=str(original.SeriesInstanceUID))
    paths = []
    for name, ds in (("original.dcm", original), ("moved.dcm", moved)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        paths.append(str(tmp_path / name))
    try:
        sent = run(["storescu", "-v", "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1",
                    str(held.dimse_port), *paths])  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("storescu did not finish")
    statuses = [line for line in sent.stdout.splitlines() + sent.stderr.splitlines()
                if "Received Store Response" in line]  # fmt: skip
    assert len(statuses) == 2 and "Success" in statuses[0], statuses
    assert "Warning: DataSetDoesNotMatchSOPClass" in statuses[1], statuses  # 0xB007
    study = str(moved.StudyInstanceUID)
    assert _held_studies(held)[study]["reasons"] == ["series-conflict"]
    assert held.study_patients("ref-b", study) == []
    assert held.study_patients("admin", study) == ["PAT-QB"]
