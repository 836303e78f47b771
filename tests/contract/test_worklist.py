"""Worklists on every index backend (SQLite, PostgreSQL): the same statements create, lock,
change, search and subscribe (docs/worklists.md; PS3.4 Annex CC, PS3.18 11)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from nubis.errors import NotFound, WorkitemRefused
from nubis.index.database import Index
from nubis.model.workitem import WORKLIST_UID
from nubis.model.workitem_search import parse_search
from nubis.security.policy import AuthPolicy, Principal, system_principal
from nubis.services.guard import Guard
from nubis.services.worklist import WorklistService
from nubis.services.worklist_events import Batch, WorklistEvents

PERFORMED = {
    "00741216": {
        "vr": "SQ",
        "Value": [
            {
                "00404050": {"vr": "DT", "Value": ["20260301100000"]},
                "00404051": {"vr": "DT", "Value": ["20260301101500"]},
            }
        ],
    }
}


# One index per engine for the module (a PostgreSQL database costs a second to make); each
# test works in a tenant of its own.
@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('ups') / 'index.sqlite'}"
    else:
        postgres = request.getfixturevalue("postgres")
        url = str(postgres.database("contract_worklist"))
    idx = Index(url)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


def _workitem(patient: str, start: str) -> dict[str, Any]:
    return {
        "00100020": {"vr": "LO", "Value": [patient]},
        "00741200": {"vr": "CS", "Value": ["HIGH"]},
        "00741204": {"vr": "LO", "Value": ["read"]},
        "00404005": {"vr": "DT", "Value": [start]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
    }


def _state(state: str, transaction: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"00741000": {"vr": "CS", "Value": [state]}}
    if transaction:
        body["00081195"] = {"vr": "UI", "Value": [transaction]}
    return body


def test_lifecycle_search_and_subscriptions(index: Index) -> None:
    service = WorklistService(index, Guard(AuthPolicy(), audit=None))
    who = system_principal(tenant="t1")
    service.subscribe(who, WORKLIST_UID, "WATCHER")
    first = service.create(who, _workitem("P1", "20260301090000"), "1.2.3.1")
    second = service.create(who, _workitem("P2", "20260302090000"), "1.2.3.2")
    with pytest.raises(WorkitemRefused):
        service.create(who, _workitem("P1", "20260301090000"), "1.2.3.1")

    service.change_state(who, first, _state("IN PROGRESS", "9.8.7"))
    with pytest.raises(WorkitemRefused) as twice:
        service.change_state(who, first, _state("IN PROGRESS", "9.8.6"))
    assert twice.value.dimse_status == 0xC302
    service.update(who, first, {**PERFORMED, "00081195": {"vr": "UI", "Value": ["9.8.7"]}})
    service.change_state(who, first, _state("COMPLETED", "9.8.7"))

    def found(**params: str) -> set[str]:
        query = parse_search(list(params.items()), max_limit=10, default_limit=10)
        items, _ = service.search(who, query)
        return {i["00080018"]["Value"][0] for i in items}

    assert found(ProcedureStepState="COMPLETED") == {first}
    assert found(ScheduledProcedureStepStartDateTime="20260302") == {second}
    assert found(ScheduledProcedureStepStartDateTime="20260301-20260302") == {first, second}
    assert found(PatientID="P*") == {first, second}

    # The worklist subscription covered both as they were created.
    targets = {s.target_uid for s in service.subscriptions(who) if s.ae_title == "WATCHER"}
    assert targets == {WORKLIST_UID, first, second}
    service.suspend(who, WORKLIST_UID, "WATCHER")
    third = service.create(who, _workitem("P3", "20260303090000"), "1.2.3.3")
    targets = {s.target_uid for s in service.subscriptions(who) if s.ae_title == "WATCHER"}
    assert targets == {first, second}
    assert third not in targets

    # Another tenant: nothing of this one, and its own workitem of the same UID.
    other = Principal("other", "t2", frozenset({"admin"}))
    with pytest.raises(NotFound):
        service.retrieve(other, first)
    assert service.create(other, _workitem("P9", "20260301090000"), first) == first
    assert service.retrieve(other, first)["00100020"]["Value"] == ["P9"]
    assert service.retrieve(who, first)["00100020"]["Value"] == ["P1"]


def test_one_claim_wins(index: Index) -> None:
    """Claims racing for one workitem (two nodes, PostgreSQL's row lock; SQLite's one
    writer): exactly one gets it, the others are told it is IN PROGRESS (PS3.4 0xC302)."""
    service = WorklistService(index, Guard(AuthPolicy(), audit=None))
    who = system_principal(tenant="race")
    uid = service.create(who, _workitem("P1", "20260301090000"), "1.2.3.9")
    outcomes: list[str] = []

    def claim(transaction: str) -> None:
        try:
            service.change_state(who, uid, _state("IN PROGRESS", transaction))
            outcomes.append(transaction)
        except WorkitemRefused as refused:
            outcomes.append(f"0x{refused.dimse_status:04X}")

    threads = [threading.Thread(target=claim, args=(f"9.9.{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if not o.startswith("0x")]
    assert len(winners) == 1 and sorted(outcomes).count("0xC302") == 3, outcomes
    # The winner's Transaction UID is the one the workitem holds.
    service.update(who, uid, {**PERFORMED, "00081195": {"vr": "UI", "Value": winners}})


def test_event_reports_queue(index: Index) -> None:
    """The event reports of PS3.4 CC.2.4 queued per subscribed AE in the change's transaction
    and handed out oldest first, on both engines; once sent they are gone (the queue keeps no
    cursor: SQLite reuses the ids of deleted rows)."""
    guard = Guard(AuthPolicy(), audit=None)
    service, events = WorklistService(index, guard), WorklistEvents(index, guard)
    who = system_principal(tenant="t-events")
    uid = service.create(who, _workitem("P1", "20260301090000"), "1.2.3.9")
    service.subscribe(who, uid, "PERFORMER")
    service.change_state(who, uid, _state("IN PROGRESS", "9.8.7"))

    def states(batch: Batch) -> list[tuple[str, int, str]]:
        return [
            (r["00001000"]["Value"][0], r["00001002"]["Value"][0], r["00741000"]["Value"][0])
            for r in batch.reports
        ]

    batch = events.next_batch(who, "PERFORMER", frozenset())
    assert states(batch) == [(uid, 1, "SCHEDULED"), (uid, 1, "IN PROGRESS")]
    events.sent(batch.ids)
    assert events.next_batch(who, "PERFORMER", frozenset()).reports == []
    service.change_state(who, uid, _state("CANCELED", "9.8.7"))
    assert states(events.next_batch(who, "PERFORMER", frozenset())) == [(uid, 1, "CANCELED")]
    assert events.next_batch(who, "NOBODY", frozenset()).reports == []
