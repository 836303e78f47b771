"""Read records committed in batches off the request path (issue 11; HIPAA 164.312(b)).

What a crash can lose is bounded (docs/security.md): the reads answered in the last
``read_flush_ms`` and never more than ``read_max_pending`` records; a write's record is never
queued; a clean stop commits every queued read; reads are refused while the batches cannot be
committed, and the records of reads answered before that are kept and committed later.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nubis.index.database import Index
from nubis.model.audit import ActiveParticipant, AuditEvent, EventAction, EventOutcome
from nubis.security import audit_events
from nubis.security.audit import AuditTrail, AuditUnavailable
from nubis.security.audit_reads import is_read

WHO = ActiveParticipant("alice", network_access_point="10.0.0.7", user_name="Alice")


def _index(path: Path) -> Index:
    idx = Index(f"sqlite:///{path}", durable=True)
    idx.migrate()
    idx.open()
    return idx


def _trail(tmp_path: Path, idx: Index, *, flush_ms: float, max_pending: int = 1000) -> AuditTrail:
    trail = AuditTrail(
        idx,
        key_path=tmp_path / "audit-signing.key",
        source_id="NUBIS",
        checkpoint_every=0,
        checkpoint_seconds=0,
        read_flush_ms=flush_ms,
        read_max_pending=max_pending,
    )
    trail.open()
    return trail


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "index.sqlite"


@pytest.fixture
def index(db_path: Path) -> Iterator[Index]:
    idx = _index(db_path)
    yield idx
    idx.close()


def _read(i: int) -> AuditEvent:
    return audit_events.instances_transferred(
        WHO,
        patient_id=f"P{i}",
        study_uids=[f"1.2.3.{i}"],
        front_door="dicomweb",
        request_id=f"r{i}",
    )


def _committed(db_path: Path) -> list[str]:
    """Request ids of the committed records, read as a crash would leave them: from the file,
    by another connection, without asking the trail (which commits its queue first)."""
    con = sqlite3.connect(db_path)
    try:
        rows = con.execute("SELECT record FROM audit_log ORDER BY seq").fetchall()
    finally:
        con.close()
    return [json.loads(r[0])["event"].get("request_id", "") for r in rows]


def test_a_read_is_answered_before_its_record_commits_and_it_commits_within_the_window(
    tmp_path: Path, index: Index, db_path: Path
) -> None:
    trail = _trail(tmp_path, index, flush_ms=200)
    try:
        trail.record(_read(1))
        # Answered at once: the record waits in the queue (well inside the 200 ms window).
        assert "r1" not in _committed(db_path)
        assert trail.reads_pending == 1
        deadline = time.monotonic() + 5
        while "r1" not in _committed(db_path):
            assert time.monotonic() < deadline, "the read's record never committed"
            time.sleep(0.01)
        assert trail.reads_pending == 0
    finally:
        trail.close()


@pytest.mark.parametrize(
    "write",
    [
        lambda: audit_events.instances_transferred(WHO, patient_id="P", stored=True),
        lambda: audit_events.instances_accessed(WHO, patient_id="P", action=EventAction.UPDATE),
        lambda: audit_events.study_deleted(WHO, patient_id="P", study_uids=["1.2.3"]),
        lambda: audit_events.data_export(WHO, patient_id="P", study_uids=["1.2.3"]),
        lambda: audit_events.access_refused(WHO, "retrieve study 1.2.3: no"),
    ],
    ids=["store", "update", "delete", "export", "refusal"],
)
def test_a_write_is_committed_before_record_returns(
    tmp_path: Path, index: Index, db_path: Path, write: object
) -> None:
    trail = _trail(tmp_path, index, flush_ms=60_000)
    try:
        event = write()  # type: ignore[operator]
        trail.record(event)
        assert not trail.is_deferred(event)
        assert len(_committed(db_path)) == 1
    finally:
        trail.close()


def test_a_clean_stop_commits_every_queued_read(
    tmp_path: Path, index: Index, db_path: Path
) -> None:
    trail = _trail(tmp_path, index, flush_ms=60_000)
    for i in range(300):
        trail.record(_read(i))
    assert _committed(db_path) == []  # a minute's window: all of them still queued
    trail.close()
    assert _committed(db_path) == [f"r{i}" for i in range(300)]
    assert trail.verify().ok


def test_never_more_than_max_pending_reads_wait(
    tmp_path: Path, index: Index, db_path: Path
) -> None:
    trail = _trail(tmp_path, index, flush_ms=60_000, max_pending=10)
    try:
        seen: list[int] = []
        for i in range(95):
            trail.record(_read(i))
            seen.append(trail.reads_pending)
        assert max(seen) <= 10
        # With a minute's window only the bound makes them commit: all but the last few are.
        committed = _committed(db_path)
        assert len(committed) >= 85
        assert committed == [f"r{i}" for i in range(len(committed))]  # in the order answered
    finally:
        trail.close()


def test_reads_are_refused_while_the_trail_cannot_be_written(
    tmp_path: Path, index: Index, db_path: Path
) -> None:
    """A real fault, not a mock: the audit table disappears under the running archive."""
    trail = _trail(tmp_path, index, flush_ms=20)
    try:
        trail.record(_read(0))
        trail.flush_reads()
        broken = sqlite3.connect(db_path, isolation_level=None)
        broken.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        # The first read after the fault may be answered (its record is queued); once a batch
        # has failed to commit, every read is refused.
        answered = []
        deadline = time.monotonic() + 5
        while True:
            i = len(answered) + 1
            try:
                trail.record(_read(i))
            except AuditUnavailable:
                break
            answered.append(f"r{i}")
            assert time.monotonic() < deadline, "reads were still answered 5 s after the fault"
            time.sleep(0.005)
        for i in range(20):
            with pytest.raises(AuditUnavailable):
                trail.record(_read(1000 + i))
        # Writes too fail closed, as ever.
        with pytest.raises(AuditUnavailable):
            trail.record(audit_events.study_deleted(WHO, patient_id="P", study_uids=["1.2.3"]))

        broken.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        broken.close()
        deadline = time.monotonic() + 10
        while True:
            try:
                trail.record(_read(2000))
                break
            except AuditUnavailable:
                assert time.monotonic() < deadline, "reads still refused 10 s after recovery"
                time.sleep(0.05)
        trail.flush_reads()
        # Every read that was answered has its record, in the order answered; none refused has.
        assert _committed(db_path) == ["r0", *answered, "r2000"]
        assert trail.verify().ok
    finally:
        trail.close()


def test_concurrent_reads_keep_the_chain_whole(tmp_path: Path, index: Index) -> None:
    trail = _trail(tmp_path, index, flush_ms=5, max_pending=50)
    try:

        def reader(k: int) -> None:
            for i in range(100):
                trail.record(_read(k * 1000 + i))
                if i % 10 == 0:
                    trail.record(
                        audit_events.instances_transferred(WHO, patient_id="P", stored=True)
                    )

        threads = [threading.Thread(target=reader, args=(k,)) for k in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        trail.close()
    report = trail.verify()
    assert report.ok, report.problem
    assert report.records == 8 * 110


def test_outcome_of_a_refused_read_is_a_read_too() -> None:
    event = audit_events.instances_accessed(WHO, outcome=EventOutcome.MINOR_FAILURE)
    assert is_read(event)
    assert is_read(audit_events.query(WHO, query_text="PatientID=P", front_door="dicomweb"))
