"""The index side of re-keying (nubis.services.study_rekey): which studies have objects that
may be wrapped under another patient's key than the one they are filed under, and the queue of
the ``rekey`` job that re-encrypts them (table ``study_rekeys``, index/schema.py).

:func:`mark` runs in the write that made a study need it (a correction that changes its
patient, a late object of a moved study), on the driver's cursor, so the study and its job
commit with the change or not at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import Connection

from nubis.index.driver import DriverCursor
from nubis.index.jobs_sql import insert_queued, queued_row
from nubis.index.schema import jobs, studies, study_rekeys

__all__ = ["KIND", "PendingStudy", "mark", "next_study", "pending", "rekey_jobs", "settle"]

KIND = "rekey"


@dataclass(frozen=True)
class PendingStudy:
    pk: int
    partition: str
    study_uid: str
    attrs: str  # the study's (corrected) attributes: whose key its objects are to be under
    version: int


def mark(cursor: DriverCursor, study_pk: int, patients: Iterable[str], now: int) -> None:
    """Record that objects of the study may be under the keys of ``patients`` (besides the
    patient it is filed under), and make sure a ``rekey`` job is queued to take it."""
    found = cursor.execute(
        "SELECT patients FROM study_rekeys WHERE study_pk = :s", {"s": study_pk}
    ).fetchone()
    known = json.loads(found[0]) if found else []
    merged = json.dumps(sorted(set(known) | set(patients)))
    if found:
        cursor.execute(
            "UPDATE study_rekeys SET patients = :p, version = version + 1 WHERE study_pk = :s",
            {"p": merged, "s": study_pk},
        )
    else:
        cursor.execute(
            "INSERT INTO study_rekeys (study_pk, patients, version, since) "
            "VALUES (:s, :p, 1, :now)",
            {"s": study_pk, "p": merged, "now": now},
        )
    # A running job may have passed the study already: one that has not started must exist.
    queued = cursor.execute(
        "SELECT id FROM jobs WHERE kind = :k AND state = 'queued' LIMIT 1", {"k": KIND}
    ).fetchone()
    if queued is None:
        insert_queued(cursor, queued_row(KIND, None, now=now, created_by="corrections"))


def pending(conn: Connection, partition: str, patient_id: str) -> list[str]:
    """Study UIDs of the partition awaiting re-keying whose objects may be under the key of
    ``patient_id``, or are to be: a crypto-shred of that patient must wait for them."""
    rows = conn.execute(
        sa.select(studies.c.study_uid, studies.c.patient_id, study_rekeys.c.patients)
        .select_from(study_rekeys.join(studies, studies.c.id == study_rekeys.c.study_pk))
        .where(studies.c.partition == partition)
        .order_by(studies.c.id)
    ).all()
    return [
        uid
        for uid, filed, patients in rows
        if (filed or "") == patient_id or patient_id in json.loads(patients)
    ]


def next_study(conn: Connection, after: int) -> PendingStudy | None:
    """The first study awaiting re-keying with a primary key above ``after``."""
    row = conn.execute(
        sa.select(
            studies.c.id,
            studies.c.partition,
            studies.c.study_uid,
            studies.c.attrs,
            study_rekeys.c.version,
        )
        .select_from(study_rekeys.join(studies, studies.c.id == study_rekeys.c.study_pk))
        .where(study_rekeys.c.study_pk > after)
        .order_by(study_rekeys.c.study_pk)
        .limit(1)
    ).first()
    return None if row is None else PendingStudy(*row)


def settle(conn: Connection, study_pk: int, version: int) -> bool:
    """The study's objects are all under the key of its patient: forget it, unless it changed
    since ``version`` was read (then a queued job takes it again)."""
    gone = conn.execute(
        sa.delete(study_rekeys).where(
            study_rekeys.c.study_pk == study_pk, study_rekeys.c.version == version
        )
    )
    return bool(gone.rowcount)


def rekey_jobs(conn: Connection) -> list[tuple[int, str]]:
    """(id, state) of the ``rekey`` jobs queued or running, oldest first."""
    return [
        (int(i), str(s))
        for i, s in conn.execute(
            sa.select(jobs.c.id, jobs.c.state)
            .where(jobs.c.kind == KIND, jobs.c.state.in_(("queued", "running")))
            .order_by(jobs.c.id)
        )
    ]
