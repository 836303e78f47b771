"""UPS-RS, the Worklist Service (PS3.18 11; PS3.4 Annex CC), in process over Starlette's
TestClient with the real services, index and audit trail.

No client written by others speaks UPS-RS in Python: dicomweb-client (0.61.2, the newest) has
no workitem calls. The requests here are the standard's: the resources of PS3.18 Table 11.1-1,
payloads as DICOM JSON (PS3.18 F.2) written by pydicom, statuses per PS3.18 11.4.3-11.12.3,
and the UPS statuses of PS3.4 CC.2 read from the Warning header.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from integration import in_process_archive
from nubis.archive import Archive
from nubis.index.schema import audit_log
from nubis.web.app import create_app

ADMIN = "ups-test-admin-token-0123456789abcdef"
JSON = "application/dicom+json"
WORKLIST = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
STATE, TRANSACTION_UID, SOP_UID = "00741000", "00081195", "00080018"


@dataclass
class World:
    client: TestClient
    archive: Archive
    keys: dict[str, str]

    def as_(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    archive = in_process_archive(tmp_path_factory.mktemp("ups") / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        users, keys = archive.users, {"admin": ADMIN}
        for name, tenant, role in (
            ("radiologist", "default", "radiologist"),
            ("referrer", "default", "referrer"),
            ("uploader", "default", "uploader"),
            ("other-admin", "other", "admin"),
        ):
            users.add_user(name, tenant=tenant, roles=role)
            keys[name] = users.create_api_key(name)[1]
        users.grant("referrer", tenant="default", patient_id="UPS-GRANTED")
        yield World(client, archive, keys)


def workitem(
    *,
    patient: str = "UPS-P1",
    name: str = "Doe^Jane",
    start: str = "20260301090000",
    code: str = "AI-CT-QC",
    station: str = "AI-1",
    priority: str = "MEDIUM",
    label: str = "CT QC",
) -> dict[str, Any]:
    """A workitem as a scheduler would push it (PS3.4 Table CC.2.5-3, N-CREATE)."""
    ds = Dataset()
    ds.PatientName = name
    ds.PatientID = patient
    ds.ScheduledProcedureStepPriority = priority
    ds.ProcedureStepLabel = label
    ds.WorklistLabel = "AI"
    ds.ScheduledProcedureStepStartDateTime = start
    ds.InputReadinessState = "READY"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "99NUBIS", "task"
    ds.ScheduledWorkitemCodeSequence = [item]
    station_item = Dataset()
    station_item.CodeValue = station
    station_item.CodingSchemeDesignator = "99NUBIS"
    station_item.CodeMeaning = "station"
    ds.ScheduledStationNameCodeSequence = [station_item]
    return ds.to_json_dict()


def create(world: World, data: dict[str, Any], who: str = "radiologist") -> str:
    uid = generate_uid()
    response = world.client.post(
        f"/dicom-web/workitems?workitem={uid}",
        content=json.dumps([data]),
        headers={**world.as_(who), "Content-Type": JSON},
    )
    assert response.status_code == 201, response.text
    assert response.headers["location"].endswith(f"/dicom-web/workitems/{uid}")
    return uid


def change_state(
    world: World, uid: str, state: str, transaction: str | None, who: str = "radiologist"
) -> Any:
    body: dict[str, Any] = {STATE: {"vr": "CS", "Value": [state]}}
    if transaction is not None:
        body[TRANSACTION_UID] = {"vr": "UI", "Value": [transaction]}
    return world.client.put(
        f"/dicom-web/workitems/{uid}/state",
        content=json.dumps([body]),
        headers={**world.as_(who), "Content-Type": JSON},
    )


def update(world: World, uid: str, body: dict[str, Any], who: str = "radiologist") -> Any:
    return world.client.post(
        f"/dicom-web/workitems/{uid}",
        content=json.dumps([body]),
        headers={**world.as_(who), "Content-Type": JSON},
    )


def retrieve(world: World, uid: str, who: str = "radiologist") -> Any:
    return world.client.get(f"/dicom-web/workitems/{uid}", headers=world.as_(who))


def search(world: World, who: str = "radiologist", **params: str) -> list[dict[str, Any]]:
    response = world.client.get("/dicom-web/workitems", params=params, headers=world.as_(who))
    if response.status_code == 204:  # no match (PS3.18 11.9.3)
        assert response.content == b""
        return []
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    assert found, "an empty result is 204, not 200 (PS3.18 11.9.3)"
    return found


def uids(items: list[dict[str, Any]]) -> set[str]:
    return {item[SOP_UID]["Value"][0] for item in items}


def ups_status(response: Any) -> str:
    """The UPS status the Warning header names, e.g. '0xC302'."""
    warning = response.headers.get("warning", "")
    assert "(0x" in warning, (response.status_code, warning, response.text)
    return "0x" + warning.split("(0x")[-1][:4]


def performed() -> dict[str, Any]:
    """The final state attributes of COMPLETED (PS3.4 CC.2.5.1.3)."""
    item = Dataset()
    item.PerformedProcedureStepStartDateTime = "20260301090500"
    item.PerformedProcedureStepEndDateTime = "20260301091000"
    ds = Dataset()
    ds.UnifiedProcedureStepPerformedProcedureSequence = [item]
    return ds.to_json_dict()


def test_claim_update_and_complete(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """The performer's path: created SCHEDULED (PS3.18 11.4), found (11.9), claimed with a
    Transaction UID (11.7, PS3.4 CC.1.1), updated with it (11.6), completed (11.7)."""
    caplog.set_level(logging.DEBUG, logger="nubis")
    uid = create(world, workitem(patient="UPS-LIFE", name="Lifecycle^Pat"))
    assert uid in uids(search(world, ProcedureStepState="SCHEDULED", PatientID="UPS-LIFE"))
    got = retrieve(world, uid)
    assert got.status_code == 200 and got.headers["content-type"].startswith(JSON)
    (data,) = got.json()
    assert data[STATE]["Value"] == ["SCHEDULED"]
    assert data["00080016"]["Value"] == ["1.2.840.10008.5.1.4.34.6.1"]  # UPS Push SOP Class

    transaction = generate_uid()
    assert change_state(world, uid, "IN PROGRESS", transaction).status_code == 200
    (data,) = retrieve(world, uid).json()
    assert data[STATE]["Value"] == ["IN PROGRESS"]
    # The Transaction UID is the performer's lock: never returned (PS3.4 CC.2.5.1.2).
    assert TRANSACTION_UID not in data
    assert transaction not in retrieve(world, uid).text

    body = {**performed(), TRANSACTION_UID: {"vr": "UI", "Value": [transaction]}}
    assert update(world, uid, body).status_code == 200
    done = change_state(world, uid, "COMPLETED", transaction)
    assert done.status_code == 200, done.text
    (data,) = retrieve(world, uid).json()
    assert data[STATE]["Value"] == ["COMPLETED"]
    assert uid in uids(search(world, ProcedureStepState="COMPLETED", PatientID="UPS-LIFE"))
    # Patient data is never logged (docs/security.md).
    # The archive's own lines; the test client (httpx) logs the URLs it asked for, search
    # parameters included, which is the caller's business, not the archive's log.
    server = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "UPS-LIFE" not in server and "Lifecycle" not in server
    # Each step is a Procedure Record naming the patient (PS3.15 A.5.3, EventID 110111).
    with world.archive.index.reading() as conn:
        records = conn.execute(
            sa.select(audit_log.c.record).where(
                audit_log.c.event_code == "110111", audit_log.c.patient_id == "UPS-LIFE"
            )
        ).all()
    described = " ".join(r[0] for r in records)
    for step in ("created", "read", "claimed", "updated", "COMPLETED"):
        assert step in described, described


def test_state_machine_refusals(world: World) -> None:
    """PS3.4 Table CC.1.1-2, with the HTTP statuses of PS3.18 11.6.3 and 11.7.3."""
    uid = create(world, workitem(patient="UPS-SM"))
    # COMPLETED before being claimed: not yet IN PROGRESS (0xC310).
    early = change_state(world, uid, "COMPLETED", generate_uid())
    assert (early.status_code, ups_status(early)) == (409, "0xC310")
    # Back to SCHEDULED: only a creation makes a workitem SCHEDULED (0xC303).
    back = change_state(world, uid, "SCHEDULED", None)
    assert (back.status_code, ups_status(back)) == (400, "0xC303")
    # A claim without a Transaction UID (0xC301).
    bare = change_state(world, uid, "IN PROGRESS", None)
    assert (bare.status_code, ups_status(bare)) == (400, "0xC301")

    transaction = generate_uid()
    assert change_state(world, uid, "IN PROGRESS", transaction).status_code == 200
    twice = change_state(world, uid, "IN PROGRESS", generate_uid(), who="admin")
    assert (twice.status_code, ups_status(twice)) == (409, "0xC302")
    # Completing without the Transaction UID, or with another one (0xC301, 400).
    missing = change_state(world, uid, "COMPLETED", None)
    assert (missing.status_code, ups_status(missing)) == (400, "0xC301")
    assert "missing" in missing.headers["warning"]
    wrong = change_state(world, uid, "COMPLETED", generate_uid())
    assert (wrong.status_code, ups_status(wrong)) == (400, "0xC301")
    assert "incorrect" in wrong.headers["warning"]
    # Updating an IN PROGRESS workitem needs its Transaction UID too (PS3.18 11.6.3).
    unlocked = update(world, uid, performed())
    assert (unlocked.status_code, ups_status(unlocked)) == (400, "0xC301")
    # COMPLETED needs the final state attributes (PS3.4 CC.2.5.1.3, 0xC304).
    unmet = change_state(world, uid, "COMPLETED", transaction)
    assert (unmet.status_code, ups_status(unmet)) == (409, "0xC304")
    body = {**performed(), TRANSACTION_UID: {"vr": "UI", "Value": [transaction]}}
    assert update(world, uid, body).status_code == 200
    assert change_state(world, uid, "COMPLETED", transaction).status_code == 200

    # Final: again COMPLETED is a warning (0xB306); anything else is refused (0xC300).
    again = change_state(world, uid, "COMPLETED", transaction)
    assert (again.status_code, ups_status(again)) == (200, "0xB306")
    cancel = change_state(world, uid, "CANCELED", transaction)
    assert (cancel.status_code, ups_status(cancel)) == (409, "0xC300")
    late = update(world, uid, {**body, "00741204": {"vr": "LO", "Value": ["late"]}})
    assert (late.status_code, ups_status(late)) == (400, "0xC300")
    (data,) = retrieve(world, uid).json()
    assert data["00741204"]["Value"] == ["CT QC"]


def test_cancellation(world: World) -> None:
    """Request Cancellation (PS3.18 11.8, PS3.4 CC.2.4) and a performer's own cancel."""
    scheduled = create(world, workitem(patient="UPS-CANCEL"))
    reason = {"00741238": {"vr": "LT", "Value": ["ordered twice"]}}
    asked = world.client.post(
        f"/dicom-web/workitems/{scheduled}/cancelrequest",
        content=json.dumps([reason]),
        headers={**world.as_("radiologist"), "Content-Type": JSON},
    )
    assert asked.status_code == 202, asked.text
    (data,) = retrieve(world, scheduled).json()
    assert data[STATE]["Value"] == ["CANCELED"]
    progress = data["00741002"]["Value"][0]
    assert progress["00741238"]["Value"] == ["ordered twice"]
    assert progress["00404052"]["Value"]  # Procedure Step Cancellation DateTime
    url = f"/dicom-web/workitems/{scheduled}/cancelrequest"
    again = world.client.post(url, headers=world.as_("radiologist"))
    assert (again.status_code, ups_status(again)) == (202, "0xB304")

    # IN PROGRESS: only its performer may cancel; with no AE subscribed to the workitem
    # nobody can tell it (0xC312, PS3.18 11.8.3; test_ups_events has the subscribed case).
    claimed = create(world, workitem(patient="UPS-CANCEL"))
    transaction = generate_uid()
    assert change_state(world, claimed, "IN PROGRESS", transaction).status_code == 200
    url = f"/dicom-web/workitems/{claimed}/cancelrequest"
    refused = world.client.post(url, headers=world.as_("admin"))
    assert (refused.status_code, ups_status(refused)) == (409, "0xC312")
    assert change_state(world, claimed, "CANCELED", transaction).status_code == 200
    (data,) = retrieve(world, claimed).json()
    assert data[STATE]["Value"] == ["CANCELED"]

    missing = world.client.post(
        f"/dicom-web/workitems/{generate_uid()}/cancelrequest", headers=world.as_("admin")
    )
    assert missing.status_code == 404


def test_search_matching(world: World) -> None:
    """Matching on the keys of PS3.4 Table CC.2.5-3 (PS3.4 C.2.2.2 single value, wildcard,
    list of UIDs, DT range; sequence matching by Code Value)."""
    tag = generate_uid()[-8:]
    march = create(world, workitem(patient=f"M-{tag}", name="Muller^Anna", start="20260305080000"))
    april = create(
        world,
        workitem(patient=f"A-{tag}", start="20260410120000", code="READ-CT", station="WS-2"),
    )
    both = {march, april}
    assert uids(search(world, PatientID=f"*-{tag}")) == both
    assert uids(search(world, PatientName="muller^anna", PatientID=f"M-{tag}")) == {march}
    found = search(world, ScheduledProcedureStepStartDateTime="20260301-20260331")
    assert march in uids(found) and april not in uids(found)
    assert uids(search(world, ScheduledProcedureStepStartDateTime="20260410")) >= {april}
    assert april not in uids(search(world, ScheduledProcedureStepStartDateTime="-20260331"))
    coded = search(world, **{"ScheduledWorkitemCodeSequence.CodeValue": "READ-CT"})
    assert april in uids(coded) and march not in uids(coded)
    station = search(world, **{"00404025.00080100": "WS-2", "PatientID": f"*-{tag}"})
    assert uids(station) == {april}
    assert uids(search(world, SOPInstanceUID=f"{march},{april}")) == both
    assert uids(search(world, InputReadinessState="READY", PatientID=f"*-{tag}")) == both
    # Paging: the limit, with the Warning of PS3.18 8.3.4.4 when more follow.
    response = world.client.get(
        "/dicom-web/workitems",
        params={"PatientID": f"*-{tag}", "limit": "1"},
        headers=world.as_("radiologist"),
    )
    assert len(response.json()) == 1 and "Additional results" in response.headers["warning"]
    # An attribute that is no matching key here is refused, never ignored (PS3.18 8.3.4).
    for params in ({"Modality": "CT"}, {"NoSuchKeyword": "1"}, {"ProcedureStepState": "DONE"}):
        bad = world.client.get("/dicom-web/workitems", params=params, headers=world.as_("admin"))
        assert bad.status_code == 400, params


def test_scope(world: World) -> None:
    """A referrer sees the workitems of its grants only; another tenant sees none; roles
    that may not hand out work may not create it (docs/worklists.md)."""
    granted = create(world, workitem(patient="UPS-GRANTED"))
    other = create(world, workitem(patient="UPS-NOT-GRANTED"))
    seen = uids(search(world, "referrer"))
    assert granted in seen and other not in seen
    assert retrieve(world, granted, "referrer").status_code == 200
    assert retrieve(world, other, "referrer").status_code == 404
    assert search(world, "other-admin", PatientID="UPS-*") == []
    assert retrieve(world, granted, "other-admin").status_code == 404
    assert (
        change_state(world, granted, "IN PROGRESS", generate_uid(), "other-admin").status_code
        == 404
    )
    for who in ("referrer", "uploader"):
        response = world.client.post(
            "/dicom-web/workitems",
            content=json.dumps([workitem()]),
            headers={**world.as_(who), "Content-Type": JSON},
        )
        assert response.status_code == 403, who
        assert change_state(world, granted, "IN PROGRESS", generate_uid(), who).status_code == 403
    assert search_status(world, "uploader") == 403
    # A UID is the tenant's own: another tenant may create a workitem of the same UID.
    response = world.client.post(
        f"/dicom-web/workitems?workitem={granted}",
        content=json.dumps([workitem()]),
        headers={**world.as_("other-admin"), "Content-Type": JSON},
    )
    assert response.status_code == 201


def search_status(world: World, who: str) -> int:
    return world.client.get("/dicom-web/workitems", headers=world.as_(who)).status_code


def test_bad_requests(world: World) -> None:
    """Create Workitem's refusals (PS3.18 11.4.3: 400 for a payload that does not satisfy
    N-CREATE, 409 for a workitem that exists) and the payload's media type."""
    headers = {**world.as_("radiologist"), "Content-Type": JSON}
    uid = create(world, workitem())
    duplicate = world.client.post(
        f"/dicom-web/workitems?workitem={uid}", content=json.dumps([workitem()]), headers=headers
    )
    assert duplicate.status_code == 409
    lacking = workitem()
    del lacking["00741204"]  # Procedure Step Label, Type 1 at N-CREATE
    response = world.client.post(
        f"/dicom-web/workitems?workitem={generate_uid()}",
        content=json.dumps([lacking]),
        headers=headers,
    )
    assert response.status_code == 400 and "Procedure Step Label" in response.text
    claimed = {**workitem(), STATE: {"vr": "CS", "Value": ["IN PROGRESS"]}}
    response = world.client.post(
        f"/dicom-web/workitems?workitem={generate_uid()}",
        content=json.dumps([claimed]),
        headers=headers,
    )
    assert response.status_code == 400
    for content, content_type, status in (
        (json.dumps([workitem()]), "application/dicom+xml", 415),
        ("not json", JSON, 400),
        (json.dumps([{"00100010": {"vr": "XX", "Value": ["x"]}}]), JSON, 400),
    ):
        response = world.client.post(
            f"/dicom-web/workitems?workitem={generate_uid()}",
            content=content,
            headers={**world.as_("radiologist"), "Content-Type": content_type},
        )
        assert response.status_code == status, (content_type, response.text)
    # No UID given: the server assigns one and names it in Location (PS3.18 11.4.3).
    response = world.client.post(
        "/dicom-web/workitems", content=json.dumps([workitem()]), headers=headers
    )
    assert response.status_code == 201
    assigned = response.headers["location"].rsplit("/", 1)[1]
    assert assigned.startswith("2.25.") and retrieve(world, assigned).status_code == 200
    # Or the payload's SOP Instance UID names it.
    named = {**workitem(), SOP_UID: {"vr": "UI", "Value": [generate_uid()]}}
    response = world.client.post(
        "/dicom-web/workitems", content=json.dumps([named]), headers=headers
    )
    assert response.headers["location"].endswith(named[SOP_UID]["Value"][0])
    bad_uid = world.client.post(
        "/dicom-web/workitems?workitem=1.2.x", content=json.dumps([workitem()]), headers=headers
    )
    assert bad_uid.status_code == 400


def test_subscriptions(world: World) -> None:
    """Subscribe, Unsubscribe, Suspend (PS3.18 11.10-11.12; PS3.4 CC.2.3): a worklist
    subscription covers every workitem not final and each one created until suspended."""
    headers = world.as_("radiologist")
    existing = create(world, workitem(patient="UPS-SUB"))
    base = "/dicom-web/workitems"
    subscribed = world.client.post(f"{base}/{WORKLIST}/subscribers/AI_QC", headers=headers)
    assert subscribed.status_code == 201
    later = create(world, workitem(patient="UPS-SUB"))

    def targets(ae: str) -> set[str]:
        listed = world.client.get(f"{base}/{WORKLIST}/subscribers", headers=headers)
        assert listed.status_code == 200
        return {s["target"] for s in listed.json() if s["aeTitle"] == ae}

    assert {WORKLIST, existing, later} <= targets("AI_QC")
    suspended = world.client.post(f"{base}/{WORKLIST}/subscribers/AI_QC/suspend", headers=headers)
    assert suspended.status_code == 200
    after = create(world, workitem(patient="UPS-SUB"))
    assert after not in targets("AI_QC") and {existing, later} <= targets("AI_QC")
    assert WORKLIST not in targets("AI_QC")
    again = world.client.post(f"{base}/{WORKLIST}/subscribers/AI_QC/suspend", headers=headers)
    assert again.status_code == 404

    # A filtered worklist: only the workitems the filter matches (PS3.18 11.10.1.2).
    filtered = world.client.post(
        f"{base}/{FILTERED}/subscribers/READER",
        params={
            "filter": "ScheduledWorkitemCodeSequence.CodeValue=READ-MR",
            "deletionlock": "true",
        },
        headers=headers,
    )
    assert filtered.status_code == 201, filtered.text
    mr = create(world, workitem(patient="UPS-SUB", code="READ-MR"))
    ct = create(world, workitem(patient="UPS-SUB", code="READ-CT"))
    assert mr in targets("READER") and ct not in targets("READER")
    no_filter = world.client.post(f"{base}/{FILTERED}/subscribers/READER2", headers=headers)
    assert no_filter.status_code == 400

    # One workitem; unsubscribing from the worklist removes every subscription of the AE.
    one = world.client.post(f"{base}/{ct}/subscribers/VIEWER", headers=headers)
    assert one.status_code == 201
    listed = world.client.get(f"{base}/{ct}/subscribers", headers=headers).json()
    assert [s["aeTitle"] for s in listed] == ["VIEWER"]
    assert (
        world.client.delete(f"{base}/{ct}/subscribers/VIEWER", headers=headers).status_code == 200
    )
    assert world.client.get(f"{base}/{ct}/subscribers", headers=headers).json() == []
    gone = world.client.delete(f"{base}/{WORKLIST}/subscribers/AI_QC", headers=headers)
    assert gone.status_code == 200 and targets("AI_QC") == set()

    # A referrer may watch a granted workitem, not the worklist; nobody one out of scope.
    granted = create(world, workitem(patient="UPS-GRANTED"))
    referrer = world.as_("referrer")
    assert (
        world.client.post(f"{base}/{granted}/subscribers/REF", headers=referrer).status_code == 201
    )
    assert (
        world.client.post(f"{base}/{WORKLIST}/subscribers/REF", headers=referrer).status_code == 403
    )
    assert world.client.post(f"{base}/{ct}/subscribers/REF", headers=referrer).status_code == 404
    bad_ae = world.client.post(f"{base}/{ct}/subscribers/{'A' * 17}", headers=headers)
    assert bad_ae.status_code == 400


def test_refusal_logs_name_no_patient(world: World, caplog: pytest.LogCaptureFixture) -> None:
    """A refused creation is logged without the workitem's patient (nubis.services.guard)."""
    caplog.set_level(logging.DEBUG)
    response = world.client.post(
        "/dicom-web/workitems",
        content=json.dumps([workitem(patient="UPS-SECRET", name="Secret^Name")]),
        headers={**world.as_("uploader"), "Content-Type": JSON},
    )
    assert response.status_code == 403
    assert "UPS-SECRET" not in caplog.text and "Secret" not in caplog.text
