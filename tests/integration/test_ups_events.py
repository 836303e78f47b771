"""The UPS-RS event channel (PS3.18 11, Open Event Channel: a WebSocket at
/ws/subscribers/{aetitle}) and the event reports of PS3.4 CC.2.4, in process over Starlette's
TestClient with the real services, index and audit trail.

Reports are delivered in the order they were queued, so "receives nothing" is tested by what
comes first: a later report, queued as a sentinel, must be the first one received.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.uid import generate_uid
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from integration import in_process_archive
from integration.test_ups import (
    ADMIN,
    FILTERED,
    JSON,
    STATE,
    WORKLIST,
    World,
    change_state,
    create,
    performed,
    update,
    workitem,
)
from nubis.web.app import create_app
from nubis.web.dicomweb import ups_events

EVENT_TYPE, AFFECTED_UID, AFFECTED_CLASS = "00001002", "00001000", "00000002"
UPS_EVENT_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.4"
REASON = "00741238"
PATIENT_TAGS = ("00100010", "00100020")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    archive = in_process_archive(tmp_path_factory.mktemp("ups-events") / "data", ADMIN)
    with TestClient(create_app(archive)) as client:
        users, keys = archive.users, {"admin": ADMIN}
        for name, role in (("radiologist", "radiologist"), ("referrer", "referrer")):
            users.add_user(name, tenant="default", roles=role)
            keys[name] = users.create_api_key(name)[1]
        users.grant("referrer", tenant="default", patient_id="EVT-GRANTED")
        yield World(client, archive, keys)


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ups_events, "POLL_SECONDS", 0.02)


def channel(ae: str) -> str:
    return f"/dicom-web/ws/subscribers/{ae}"


def subscribe(world: World, target: str, ae: str, who: str = "radiologist", **params: str) -> None:
    url = f"/dicom-web/workitems/{target}/subscribers/{ae}"
    response = world.client.post(url, params=params, headers=world.as_(who))
    assert response.status_code == 201, response.text


def report(ws: Any) -> dict[str, Any]:
    message = ws.receive_text()
    found: dict[str, Any] = json.loads(message)
    assert found[AFFECTED_CLASS]["Value"] == [UPS_EVENT_SOP_CLASS]
    assert not any(tag in found for tag in PATIENT_TAGS), "a report carries no patient data"
    return found


def about(found: dict[str, Any]) -> tuple[str, int, str | None]:
    """(workitem, Event Type ID, Procedure Step State) of a report."""
    state = found.get(STATE, {}).get("Value", [None])[0]
    return found[AFFECTED_UID]["Value"][0], found[EVENT_TYPE]["Value"][0], state


def test_state_reports_in_order(world: World) -> None:
    """PS3.4 CC.2.3.2: the current state on subscription; CC.2.4: a UPS State Report (Event
    Type ID 1) at each change of state, claimed then completed, in order."""
    uid = create(world, workitem(patient="EVT-P1"))
    subscribe(world, uid, "PERFORMER")
    with world.client.websocket_connect(
        channel("PERFORMER"), headers=world.as_("radiologist")
    ) as ws:
        assert about(report(ws)) == (uid, 1, "SCHEDULED")
        transaction = generate_uid()
        assert change_state(world, uid, "IN PROGRESS", transaction).status_code == 200
        assert update(world, uid, {**performed(), **_transaction(transaction)}).status_code == 200
        assert change_state(world, uid, "COMPLETED", transaction).status_code == 200
        claimed, completed = report(ws), report(ws)
        assert about(claimed) == (uid, 1, "IN PROGRESS")
        assert claimed["00404041"]["Value"] == ["READY"]  # Input Readiness State
        assert about(completed) == (uid, 1, "COMPLETED")
    # Sent reports are gone: a new channel of the AE starts with what comes next.
    later = create(world, workitem(patient="EVT-P1"))
    subscribe(world, later, "PERFORMER")
    with world.client.websocket_connect(channel("PERFORMER"), headers=world.as_("admin")) as ws:
        assert about(report(ws)) == (later, 1, "SCHEDULED")


def _transaction(uid: str) -> dict[str, Any]:
    return {"00081195": {"vr": "UI", "Value": [uid]}}


def test_cancellation_request_reaches_the_performer(world: World) -> None:
    """PS3.4 CC.2.4.3: a cancellation request of a workitem IN PROGRESS is a UPS Cancel
    Requested report (Event Type ID 2) with its reason; the performer then cancels."""
    uid = create(world, workitem(patient="EVT-P2"))
    transaction = generate_uid()
    assert change_state(world, uid, "IN PROGRESS", transaction).status_code == 200
    subscribe(world, uid, "AI_CANCEL")
    with world.client.websocket_connect(
        channel("AI_CANCEL"), headers=world.as_("radiologist")
    ) as ws:
        assert about(report(ws)) == (uid, 1, "IN PROGRESS")
        asked = world.client.post(
            f"/dicom-web/workitems/{uid}/cancelrequest",
            content=json.dumps([{REASON: {"vr": "LT", "Value": ["patient left"]}}]),
            headers={**world.as_("admin"), "Content-Type": JSON},
        )
        assert asked.status_code == 202, asked.text
        requested = report(ws)
        assert about(requested) == (uid, 2, None)
        assert requested[REASON]["Value"] == ["patient left"]
        assert change_state(world, uid, "CANCELED", transaction).status_code == 200
        assert about(report(ws)) == (uid, 1, "CANCELED")


def test_worklist_subscribers_hear_of_creations(world: World) -> None:
    """A Filtered Worklist subscriber is sent the state of each matching workitem created
    (PS3.4 CC.2.3.2); an AE subscribed to nothing is sent nothing."""
    subscribe(world, FILTERED, "NEWS", filter="ScheduledWorkitemCodeSequence.CodeValue=EVT-NEW")
    with (
        world.client.websocket_connect(channel("NEWS"), headers=world.as_("radiologist")) as ws,
        world.client.websocket_connect(channel("NOBODY"), headers=world.as_("admin")) as idle,
    ):
        create(world, workitem(patient="EVT-P3", code="EVT-OTHER"))
        new = create(world, workitem(patient="EVT-P3", code="EVT-NEW"))
        assert about(report(ws)) == (new, 1, "SCHEDULED")
        sentinel = create(world, workitem(patient="EVT-P3"))
        subscribe(world, sentinel, "NOBODY")
        assert about(report(idle)) == (sentinel, 1, "SCHEDULED")


def test_referrer_never_hears_of_another_patient(world: World) -> None:
    """The Guard scopes the channel: a referrer listening as an AE that watches the whole
    worklist receives only the reports of its granted patients; the others stay queued for a
    caller that may read them."""
    subscribe(world, WORKLIST, "SHARED")
    flushed = create(world, workitem(patient="EVT-FLUSH"))
    with world.client.websocket_connect(channel("SHARED"), headers=world.as_("radiologist")) as ws:
        # First the current state of the workitems already there (PS3.4 CC.2.3.2).
        while about(report(ws))[0] != flushed:
            pass
    hidden = create(world, workitem(patient="EVT-NOT-GRANTED"))
    with world.client.websocket_connect(channel("SHARED"), headers=world.as_("referrer")) as ws:
        granted = create(world, workitem(patient="EVT-GRANTED"))
        assert about(report(ws)) == (granted, 1, "SCHEDULED")
    with world.client.websocket_connect(channel("SHARED"), headers=world.as_("radiologist")) as ws:
        assert about(report(ws)) == (hidden, 1, "SCHEDULED")


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-a-key"}])
def test_handshake_needs_credentials(world: World, headers: dict[str, str]) -> None:
    """The channel is authenticated like every other route: without valid credentials the
    handshake is refused (closed before accepted, RFC 6455 1008)."""
    with (
        pytest.raises(WebSocketDisconnect) as refused,
        world.client.websocket_connect(channel("PERFORMER"), headers=headers) as ws,
    ):
        ws.receive_text()
    assert refused.value.code == 1008
