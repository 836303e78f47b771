"""The ``analyzer_runs`` table's statements (nubis.analyzers.job): which stable studies await
an analyzer, queueing them with their ``analyze`` job in one commit, concurrency slots, and
outcomes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, exists, func, insert, select, update

from nubis.index.database import Index
from nubis.index.jobs_sql import queued_row
from nubis.index.schema import analyzer_runs, jobs, quarantined_studies, studies

__all__ = [
    "QUEUED",
    "RUNNING",
    "Candidate",
    "Run",
    "candidates",
    "ensure_run",
    "finish",
    "outstanding",
    "put_back",
    "queue",
    "take_slot",
]

QUEUED, RUNNING, DONE, SKIPPED, FAILED = "queued", "running", "done", "skipped", "failed"
# Every analyzer's slots are taken under this lock (PostgreSQL: a transaction advisory lock),
# so two runners never both see a last free slot.
SLOTS_LOCK = 0x6E75_6101


@dataclass(frozen=True)
class Candidate:
    study_pk: int
    partition: str
    study_uid: str
    modalities: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    id: int
    study_pk: int
    state: str


def candidates(
    conn: Connection,
    analyzer: str,
    version: str,
    *,
    stable_before: int,
    since: int,
    limit: int,
) -> list[Candidate]:
    """Studies no instance reached since ``stable_before`` (and changed since ``since``), not
    held in quarantine, never queued for this analyzer version; the latest first."""
    queued = exists().where(
        analyzer_runs.c.study_pk == studies.c.id,
        analyzer_runs.c.analyzer == analyzer,
        analyzer_runs.c.version == version,
    )
    held = exists().where(quarantined_studies.c.study_pk == studies.c.id)
    rows = conn.execute(
        select(studies.c.id, studies.c.partition, studies.c.study_uid, studies.c.modalities)
        .where(
            studies.c.updated_at <= stable_before,
            studies.c.updated_at >= since,
            studies.c.num_instances > 0,
            ~queued,
            ~held,
        )
        .order_by(studies.c.updated_at.desc())
        .limit(limit)
    ).all()
    return [
        Candidate(pk, p, uid, tuple(filter(None, (m or "").split("\\")))) for pk, p, uid, m in rows
    ]


def outstanding(conn: Connection, analyzer: str, version: str) -> int:
    """How many studies are queued for or being analyzed by this analyzer version."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(analyzer_runs)
            .where(
                analyzer_runs.c.analyzer == analyzer,
                analyzer_runs.c.version == version,
                analyzer_runs.c.state.in_([QUEUED, RUNNING]),
            )
        ).scalar_one()
    )


def queue(
    conn: Connection,
    study_pk: int,
    analyzer: str,
    version: str,
    params: dict[str, Any],
    *,
    now: int,
    max_attempts: int,
) -> int:
    """Queue the study's run and its ``analyze`` job in this transaction; the job's id."""
    row = queued_row("analyze", params, now=now, max_attempts=max_attempts, created_by="analyzers")
    job_id = int(conn.execute(insert(jobs).values(row).returning(jobs.c.id)).scalar_one())
    conn.execute(
        insert(analyzer_runs).values(
            study_pk=study_pk,
            analyzer=analyzer,
            version=version,
            state=QUEUED,
            job_id=job_id,
            queued_at=now,
        )
    )
    return job_id


def ensure_run(
    conn: Connection, partition: str, study_uid: str, analyzer: str, version: str, *, now: int
) -> Run | None:
    """The run of the study for this analyzer version, made now if it has none (a run asked
    for by hand); None when the index holds no such study."""
    study = conn.execute(
        select(studies.c.id).where(
            studies.c.partition == partition, studies.c.study_uid == study_uid
        )
    ).first()
    if study is None:
        return None
    which = and_(
        analyzer_runs.c.study_pk == study[0],
        analyzer_runs.c.analyzer == analyzer,
        analyzer_runs.c.version == version,
    )
    found = conn.execute(select(analyzer_runs.c.id, analyzer_runs.c.state).where(which)).first()
    if found is None:
        conn.execute(
            insert(analyzer_runs).values(
                study_pk=study[0], analyzer=analyzer, version=version, state=QUEUED, queued_at=now
            )
        )
        found = conn.execute(select(analyzer_runs.c.id, analyzer_runs.c.state).where(which)).one()
    return Run(int(found[0]), int(study[0]), str(found[1]))


def take_slot(
    conn: Connection,
    run_id: int,
    analyzer: str,
    *,
    limit: int,
    job_id: int,
    now: int,
    slot_ms: int,
) -> bool:
    """Mark the run running, holding one of ``limit`` slots of ``analyzer`` until
    ``now + slot_ms``; False (nothing changed) while every slot is held by another run."""
    Index.serialize(conn, SLOTS_LOCK)
    held = conn.execute(
        select(func.count())
        .select_from(analyzer_runs)
        .where(
            analyzer_runs.c.analyzer == analyzer,
            analyzer_runs.c.state == RUNNING,
            analyzer_runs.c.slot_expires_at > now,
            analyzer_runs.c.id != run_id,
        )
    ).scalar_one()
    if held >= limit:
        return False
    conn.execute(
        update(analyzer_runs)
        .where(analyzer_runs.c.id == run_id)
        .values(state=RUNNING, job_id=job_id, started_at=now, slot_expires_at=now + slot_ms)
    )
    return True


def finish(
    conn: Connection,
    run_id: int,
    state: str,
    *,
    now: int,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """The run's outcome (done, skipped or failed); its slot is free."""
    conn.execute(
        update(analyzer_runs)
        .where(analyzer_runs.c.id == run_id)
        .values(
            state=state,
            finished_at=now,
            slot_expires_at=None,
            summary=None if summary is None else json.dumps(summary, sort_keys=True),
            last_error=error,
        )
    )


def put_back(conn: Connection, run_id: int, error: str) -> None:
    """The run waits for its job's next attempt; its slot is free meanwhile."""
    conn.execute(
        update(analyzer_runs)
        .where(analyzer_runs.c.id == run_id)
        .values(state=QUEUED, slot_expires_at=None, last_error=error)
    )
