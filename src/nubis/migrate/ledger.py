"""The migration ledger: what each source listed and what became of every instance.

Kept in the index (tables ``migration_studies`` and ``migration_instances``), so a migration
killed on one node resumes on any, and its report can be made from anywhere that reaches the
index. It holds UIDs, digests and reasons, never patient data.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from nubis.index.database import Index
from nubis.index.driver import driver_cursor
from nubis.index.schema import migration_instances as mi
from nubis.index.schema import migration_studies as ms
from nubis.migrate.source import SourceInstance, SourceStudy

__all__ = ["Entry", "Ledger", "Mark", "Outcome", "StudyState"]

_REASON_LENGTH = 512
# UIDs per IN (...) list: well under SQLite's and PostgreSQL's bound parameter limits.
_IN_LIST = 500


class Outcome(enum.StrEnum):
    LISTED = "listed"  # listed at the source, not handled yet
    STORED = "stored"  # stored (or found identical) through the store service
    PRESENT = "present"  # already in the archive with the source's digest: not moved again
    REFUSED = "refused"  # the store refused it: ``reason``, ``status``
    MISSING = "missing"  # the source did not deliver it: ``reason``
    # Listed by an earlier run, no longer by the source (deleted there): what the archive
    # holds of it stays, since a migration never deletes.
    GONE = "gone"


class StudyState(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"


@dataclass(frozen=True)
class Entry:
    sop_instance_uid: str
    study_uid: str
    series_uid: str | None
    source_sha256: str | None
    size: int | None
    outcome: Outcome
    status: int | None
    reason: str | None


@dataclass(frozen=True)
class Mark:
    """An instance's outcome, to be written with its study's others (:meth:`Ledger.write`)."""

    sop_instance_uid: str
    study_uid: str
    outcome: Outcome
    series_uid: str | None = None
    source_sha256: str | None = None
    size: int | None = None
    status: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    partition: str
    study_date: str | None
    source_count: int | None
    state: StudyState
    job_id: int | None


def _chunks(uids: list[str]) -> Iterable[list[str]]:
    for at in range(0, len(uids), _IN_LIST):
        yield uids[at : at + _IN_LIST]


def _now() -> int:
    return time.time_ns() // 1_000_000


class Ledger:
    """The ledger of migration ``name`` in ``partition``."""

    def __init__(self, index: Index, name: str, partition: str) -> None:
        self.index = index
        self.name = name
        self.partition = partition

    # ------------------------------------------------------------------ studies
    def study(self, study_uid: str) -> StudyRow | None:
        with self.index.reading() as conn:
            row = conn.execute(
                select(
                    ms.c.study_uid, ms.c.partition, ms.c.study_date, ms.c.source_count,
                    ms.c.state, ms.c.job_id,
                ).where(ms.c.migration == self.name, ms.c.study_uid == study_uid)
            ).first()  # fmt: skip
        return None if row is None else StudyRow(*row[:4], StudyState(row[4]), row[5])

    def studies(self) -> list[StudyRow]:
        with self.index.reading() as conn:
            rows = conn.execute(
                select(
                    ms.c.study_uid, ms.c.partition, ms.c.study_date, ms.c.source_count,
                    ms.c.state, ms.c.job_id,
                )
                .where(ms.c.migration == self.name)
                .order_by(ms.c.study_date, ms.c.study_uid)
            ).all()  # fmt: skip
        return [StudyRow(*r[:4], StudyState(r[4]), r[5]) for r in rows]

    def begin_study(self, study: SourceStudy, listed: Iterable[SourceInstance]) -> set[str]:
        """Record the study as pending with the instances the source listed now; outcomes
        already recorded for them are kept (a resumed study), and those it listed before and
        no longer does become ``GONE``.

        A SOP Instance UID is one row of the ledger: one the source lists twice in the study
        is recorded once, and one it lists under another study of the migration too stays
        with that study. The latter are returned, so the job can report them."""
        listed = list(listed)
        unique = list(dict.fromkeys(i.sop_instance_uid for i in listed))
        series = {i.sop_instance_uid: i.series_uid for i in reversed(listed)}
        now = _now()

        def job(conn: Connection) -> set[str]:
            cursor = driver_cursor(conn)
            cursor.execute(_STUDY_ROWS, (self.name, study.study_uid))
            here: dict[str, str] = dict(cursor.fetchall())
            elsewhere: set[str] = set()
            for chunk in _chunks([uid for uid in unique if uid not in here]):
                cursor.execute(_in_list(_LEDGER_ROWS_OF, len(chunk)), (self.name, *chunk))
                elsewhere.update(row[0] for row in cursor.fetchall())
            cursor.execute(
                _BEGIN_STUDY,
                {
                    "migration": self.name,
                    "study_uid": study.study_uid,
                    "partition": self.partition,
                    "study_date": (study.study_date or "")[:8] or None,
                    "source_count": len(unique) - len(elsewhere),
                    "state": StudyState.PENDING.value,
                    "updated_at": now,
                },
            )
            new = [
                (self.name, uid, study.study_uid, series[uid], Outcome.LISTED.value, now)
                for uid in unique
                if uid not in here and uid not in elsewhere
            ]
            if new:
                cursor.executemany(_LISTED, new)
            now_listed = set(unique)
            gone = [
                uid
                for uid, outcome in here.items()
                if uid not in now_listed and outcome != Outcome.GONE.value
            ]
            for chunk in _chunks(gone):
                cursor.execute(
                    _in_list(_GONE, len(chunk)), (Outcome.GONE.value, now, self.name, *chunk)
                )
            return elsewhere

        return self.index.write(job)

    def listing(self, study_uid: str) -> set[str]:
        """The SOP Instance UIDs of the study as the source listed them last."""
        return {
            e.sop_instance_uid for e in self.entries(study_uid) if e.outcome is not Outcome.GONE
        }

    # ------------------------------------------------------------------ instances
    def entries(self, study_uid: str) -> list[Entry]:
        with self.index.reading() as conn:
            rows = conn.execute(
                select(
                    mi.c.sop_instance_uid, mi.c.study_uid, mi.c.series_uid, mi.c.source_sha256,
                    mi.c.size, mi.c.outcome, mi.c.status, mi.c.reason,
                )
                .where(mi.c.migration == self.name, mi.c.study_uid == study_uid)
                .order_by(mi.c.sop_instance_uid)
            ).all()  # fmt: skip
        return [Entry(*r[:5], Outcome(r[5]), r[6], r[7]) for r in rows]

    def write(
        self,
        marks: Iterable[Mark],
        *,
        finished: tuple[str, int] | None = None,
        also: Callable[[Connection], object] | None = None,
    ) -> None:
        """Record outcomes (a row is inserted for an instance the source had not listed) and,
        with ``finished`` (study UID, job id), mark that study done: one transaction, so a
        study is never done without its outcomes. ``also`` runs in the same transaction (the
        study's audit record).

        One statement run for the study's rows: this runs on the index's one writer thread,
        whose every millisecond the concurrent stores of the migration wait for (issue 12)."""
        # One outcome per UID, the last given (as successive updates would leave it).
        by_uid = {mark.sop_instance_uid: mark for mark in marks}
        now = _now()

        def job(conn: Connection) -> None:
            cursor = driver_cursor(conn)
            cursor.executemany(
                _OUTCOME,
                [
                    (
                        self.name, m.sop_instance_uid, m.study_uid, m.series_uid,
                        m.source_sha256, m.size, m.outcome.value, m.status,
                        _reason(m.reason), now,
                    )
                    for m in by_uid.values()
                ],
            )  # fmt: skip
            if finished is not None:
                study_uid, job_id = finished
                cursor.execute(
                    _STUDY_DONE, (StudyState.DONE.value, job_id, now, self.name, study_uid)
                )
            if also is not None:
                also(conn)

        self.index.write(job)


def _reason(reason: str | None) -> str | None:
    return None if reason is None else reason[:_REASON_LENGTH]


# The ledger's writes run on the index's one writer thread, beside every store of the
# migration: fixed statements on the driver's cursor (nubis.index.driver), not SQLAlchemy's
# statement building, which cost more there than the objects' own index rows (issue 12).
# INSERT ... ON CONFLICT ... DO UPDATE is SQLite's (3.24+) and PostgreSQL's alike.
_STUDY_ROWS = (
    "SELECT sop_instance_uid, outcome FROM migration_instances"
    " WHERE migration = ? AND study_uid = ?"
)
_LEDGER_ROWS_OF = (
    "SELECT sop_instance_uid FROM migration_instances"
    " WHERE migration = ? AND sop_instance_uid IN ({})"
)
_BEGIN_STUDY = (
    "INSERT INTO migration_studies"
    " (migration, study_uid, partition, study_date, source_count, state, updated_at)"
    " VALUES (:migration, :study_uid, :partition, :study_date, :source_count, :state,"
    " :updated_at)"
    " ON CONFLICT (migration, study_uid) DO UPDATE SET partition = excluded.partition,"
    " study_date = excluded.study_date, source_count = excluded.source_count,"
    " state = excluded.state, updated_at = excluded.updated_at"
)
_LISTED = (
    "INSERT INTO migration_instances"
    " (migration, sop_instance_uid, study_uid, series_uid, outcome, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_GONE = (
    "UPDATE migration_instances SET outcome = ?, updated_at = ?"
    " WHERE migration = ? AND sop_instance_uid IN ({})"
)
# An outcome over the row of a listed instance (its study and series stay; a digest or size
# not given keeps the row's own), or a new row for an instance the source had not listed.
_OUTCOME = (
    "INSERT INTO migration_instances"
    " (migration, sop_instance_uid, study_uid, series_uid, source_sha256, size, outcome,"
    " status, reason, updated_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (migration, sop_instance_uid) DO UPDATE SET outcome = excluded.outcome,"
    " status = excluded.status, reason = excluded.reason, updated_at = excluded.updated_at,"
    " source_sha256 = COALESCE(excluded.source_sha256, migration_instances.source_sha256),"
    " size = COALESCE(excluded.size, migration_instances.size)"
)
_STUDY_DONE = (
    "UPDATE migration_studies SET state = ?, job_id = ?, updated_at = ?"
    " WHERE migration = ? AND study_uid = ?"
)


def _in_list(sql: str, n: int) -> str:
    return sql.format(", ".join("?" * n))
