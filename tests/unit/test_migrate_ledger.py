"""The migration ledger's study write: outcomes in one batch, atomic with the study's end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection

from nubis.errors import StorageUnavailable
from nubis.index.database import Index
from nubis.migrate.ledger import Ledger, Mark, Outcome, StudyState
from nubis.migrate.source import SourceInstance, SourceStudy

_STUDY = "1.2.826.0.1.3680043.8.498.1"
_SERIES = _STUDY + ".1"
_A, _B, _C = (f"{_SERIES}.{n}" for n in (1, 2, 3))
_UNLISTED = f"{_SERIES}.9"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """On both engines: the ledger's writes are SQL of its own (INSERT ... ON CONFLICT)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = request.getfixturevalue("postgres").database("migrate_ledger")
    index = Index(url, durable=False)
    index.migrate()
    index.open()
    try:
        ledger = Ledger(index, "m", "default")
        ledger.begin_study(
            SourceStudy(_STUDY, None, 3), [SourceInstance(u, _SERIES) for u in (_A, _B, _C)]
        )
        yield ledger
    finally:
        index.close()


def test_outcomes_updated_and_unlisted_instances_inserted_with_the_study_done(
    ledger: Ledger,
) -> None:
    ledger.write(
        [
            Mark(_A, _STUDY, Outcome.REFUSED, reason="first delivery"),
            Mark(_A, _STUDY, Outcome.STORED, source_sha256="a" * 64, size=10),  # the last wins
            Mark(_B, _STUDY, Outcome.REFUSED, status=0xA900, reason="x" * 600),
            Mark(_UNLISTED, _STUDY, Outcome.STORED, series_uid=_SERIES, size=7),
        ],
        finished=(_STUDY, 42),
    )
    entries = {e.sop_instance_uid: e for e in ledger.entries(_STUDY)}
    assert set(entries) == {_A, _B, _C, _UNLISTED}
    assert (entries[_A].outcome, entries[_A].source_sha256, entries[_A].size) == (
        Outcome.STORED,
        "a" * 64,
        10,
    )
    assert entries[_A].reason is None
    assert entries[_B].outcome is Outcome.REFUSED and entries[_B].status == 0xA900
    assert entries[_B].reason == "x" * 512  # the column's length
    assert entries[_C].outcome is Outcome.LISTED  # no mark: untouched
    assert entries[_UNLISTED].outcome is Outcome.STORED and entries[_UNLISTED].size == 7
    row = ledger.study(_STUDY)
    assert row is not None and (row.state, row.job_id) == (StudyState.DONE, 42)

    # A later outcome without a digest or size keeps the ones recorded.
    ledger.write([Mark(_A, _STUDY, Outcome.PRESENT)])
    again = {e.sop_instance_uid: e for e in ledger.entries(_STUDY)}[_A]
    assert (again.outcome, again.source_sha256, again.size) == (Outcome.PRESENT, "a" * 64, 10)


def test_a_failing_audit_record_leaves_the_study_unwritten(ledger: Ledger) -> None:
    """The study's record runs in its ledger transaction: without the record, neither its
    outcomes nor its end are kept (the study is moved again on resume)."""

    def record(conn: Connection) -> None:
        raise StorageUnavailable("the audit trail could not take the record")

    with pytest.raises(StorageUnavailable):
        ledger.write([Mark(_A, _STUDY, Outcome.STORED)], finished=(_STUDY, 1), also=record)
    assert {e.outcome for e in ledger.entries(_STUDY)} == {Outcome.LISTED}
    row = ledger.study(_STUDY)
    assert row is not None and row.state is StudyState.PENDING
