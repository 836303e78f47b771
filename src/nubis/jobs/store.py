"""The job table: enqueue, claim under a lease, report progress, finish.

Every state change is one write job of the index (``Index.write``): on SQLite the single writer
runs them one at a time, so two claims never see the same queued row; on PostgreSQL the claim
selects ``FOR UPDATE SKIP LOCKED``, so concurrent runners on any number of nodes each lock a
different row and none waits for another. A running job carries a lease (owner, expiry) that its
runner renews; a runner that dies stops renewing, and once the lease has expired the job is
claimable again, resuming from the cursor its last progress saved. Every update by a runner
names the owner in its WHERE clause, so a runner whose job was taken over writes nothing more.
Write jobs may run more than once on PostgreSQL (retries on serialization failures): each one
here reads and writes in one transaction and so is safe to repeat.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from nubis.index.database import Index
from nubis.index.jobs_sql import queued_row
from nubis.index.schema import jobs

__all__ = ["Job", "JobState", "JobStore", "LeaseLost"]


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class LeaseLost(Exception):
    """The job's lease expired and another runner has it, or it is no longer running."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    params: dict[str, Any]
    state: JobState
    progress_done: int
    progress_total: int | None
    cursor: Any
    attempts: int
    max_attempts: int
    lease_owner: str | None
    lease_expires_at: int | None
    cancel_requested: bool
    not_before: int
    created_at: int
    created_by: str | None
    started_at: int | None
    finished_at: int | None
    last_error: str | None
    result: dict[str, Any] | None
    unique_key: str | None

    @property
    def fraction(self) -> float | None:
        """Share of the work done, 0..1; None while the total is unknown."""
        if not self.progress_total:
            return 1.0 if self.state is JobState.DONE else None
        return min(1.0, self.progress_done / self.progress_total)

    @classmethod
    def from_row(cls, row: Any) -> Job:
        m = row._mapping
        return cls(
            id=m["id"],
            kind=m["kind"],
            params=json.loads(m["params"]),
            state=JobState(m["state"]),
            progress_done=m["progress_done"],
            progress_total=m["progress_total"],
            cursor=None if m["cursor_json"] is None else json.loads(m["cursor_json"]),
            attempts=m["attempts"],
            max_attempts=m["max_attempts"],
            lease_owner=m["lease_owner"],
            lease_expires_at=m["lease_expires_at"],
            cancel_requested=bool(m["cancel_requested"]),
            not_before=m["not_before"],
            created_at=m["created_at"],
            created_by=m["created_by"],
            started_at=m["started_at"],
            finished_at=m["finished_at"],
            last_error=m["last_error"],
            result=None if m["result"] is None else json.loads(m["result"]),
            unique_key=m["unique_key"],
        )


class JobStore:
    """The ``jobs`` table of an open :class:`~nubis.index.database.Index`."""

    def __init__(self, index: Index) -> None:
        self.index = index

    # ------------------------------------------------------------------ producers
    def enqueue(
        self,
        kind: str,
        params: dict[str, Any] | None = None,
        *,
        unique_key: str | None = None,
        max_attempts: int = 3,
        created_by: str | None = None,
        not_before: int | None = None,
    ) -> int | None:
        """Queue a job; its id, or None when a job with ``unique_key`` already exists."""
        row = queued_row(
            kind,
            params,
            now=now_ms(),
            unique_key=unique_key,
            max_attempts=max_attempts,
            created_by=created_by,
            not_before=not_before,
        )

        def job(conn: Connection) -> int | None:
            if (
                unique_key is not None
                and conn.execute(select(jobs.c.id).where(jobs.c.unique_key == unique_key)).first()
            ):
                return None
            return int(conn.execute(insert(jobs).values(row).returning(jobs.c.id)).scalar_one())

        try:
            return self.index.write(job)
        except IntegrityError:
            # Another node inserted the same unique key between our check and our insert.
            return None

    def schedule(self, kind: str, every_seconds: int, *, now: int | None = None) -> int | None:
        """Queue the periodic job ``kind`` for the current period unless it exists already.

        Periods are counted from the epoch, so every node computes the same key for the same
        period and the unique key lets only one of them insert it. Nothing is queued while an
        earlier run of the kind is still queued or running, so a slow run never piles up more.
        """
        moment = now_ms() if now is None else now
        period = moment // (every_seconds * 1000)
        key = f"{kind}@{every_seconds}s#{period}"
        with self.index.reading() as conn:
            busy = conn.execute(
                select(jobs.c.id)
                .where(
                    jobs.c.kind == kind,
                    jobs.c.unique_key.is_not(None),
                    jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
                )
                .limit(1)
            ).first()
        if busy:
            return None
        return self.enqueue(kind, unique_key=key, created_by="schedule")

    def request(self, kind: str) -> bool:
        """Queue a run of the periodic job ``kind`` now, for something that just happened.

        True when one is queued now or was queued already (it has not started, so it will see
        what happened); False while one is running (it may have read past it: ask again
        once it finished). Shares ``schedule``'s rule of one queued or running at a time.
        """
        with self.index.reading() as conn:
            states = set(
                conn.execute(
                    select(jobs.c.state).where(
                        jobs.c.kind == kind,
                        jobs.c.unique_key.is_not(None),
                        jobs.c.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]),
                    )
                ).scalars()
            )
        if JobState.QUEUED.value in states:
            return True
        if JobState.RUNNING.value in states:
            return False
        self.enqueue(kind, unique_key=f"{kind}@request#{now_ms()}", created_by="request")
        return True

    # ------------------------------------------------------------------ runners
    def claim(
        self,
        owner: str,
        lease_seconds: float,
        kinds: Collection[str],
        *,
        job_id: int | None = None,
    ) -> Job | None:
        """Take the oldest claimable job of ``kinds`` for ``owner``: a queued one that is due,
        or a running one whose lease expired (its runner died). None when there is none.
        With ``job_id``, that job only.

        A job whose lease expired on its last allowed attempt fails instead ("the runner
        stopped"), and one cancelled while its runner died is marked cancelled.
        """
        kinds = list(kinds)
        which = [jobs.c.kind.in_(kinds)] + ([] if job_id is None else [jobs.c.id == job_id])

        def claimable(now: int) -> Any:
            return (
                select(jobs)
                .where(
                    *which,
                    or_(
                        and_(jobs.c.state == JobState.QUEUED.value, jobs.c.not_before <= now),
                        and_(
                            jobs.c.state == JobState.RUNNING.value,
                            jobs.c.lease_expires_at < now,
                        ),
                    ),
                )
                .order_by(jobs.c.id)
                .limit(1)
            )

        # Idle runners poll: a read answers "nothing to do" without taking SQLite's write
        # lock or a PostgreSQL write transaction.
        with self.index.reading() as conn:
            if conn.execute(claimable(now_ms())).first() is None:
                return None

        def job(conn: Connection) -> Job | None:
            now = now_ms()
            for _ in range(16):
                row = conn.execute(claimable(now).with_for_update(skip_locked=True)).first()
                if row is None:
                    return None
                found = Job.from_row(row)
                if found.state is JobState.RUNNING and (
                    found.cancel_requested or found.attempts >= found.max_attempts
                ):
                    state, error = (
                        (JobState.CANCELLED, found.last_error)
                        if found.cancel_requested
                        else (
                            JobState.FAILED,
                            f"its runner {found.lease_owner} stopped renewing its lease "
                            f"(attempt {found.attempts} of {found.max_attempts})",
                        )
                    )
                    conn.execute(
                        update(jobs)
                        .where(jobs.c.id == found.id)
                        .values(
                            state=state.value,
                            finished_at=now,
                            lease_expires_at=None,
                            last_error=error,
                        )
                    )
                    continue
                values = {
                    "state": JobState.RUNNING.value,
                    "lease_owner": owner,
                    "lease_expires_at": now + int(lease_seconds * 1000),
                    "attempts": found.attempts + 1,
                    "started_at": found.started_at or now,
                }
                conn.execute(update(jobs).where(jobs.c.id == found.id).values(values))
                return Job.from_row(conn.execute(select(jobs).where(jobs.c.id == found.id)).one())
            return None

        return self.index.write(job)

    def heartbeat(
        self,
        job_id: int,
        owner: str,
        lease_seconds: float,
        progress: tuple[int, int | None, Any] | None = None,
    ) -> bool:
        """Renew the lease (and save ``progress``: done, total, cursor); True when someone
        asked to cancel the job. Raises LeaseLost when the job is no longer ours."""
        values: dict[str, Any] = {"lease_expires_at": now_ms() + int(lease_seconds * 1000)}
        if progress is not None:
            done, total, cursor = progress
            values.update(
                progress_done=done,
                progress_total=total,
                cursor_json=None if cursor is None else json.dumps(cursor),
            )

        def job(conn: Connection) -> bool:
            row = conn.execute(
                update(jobs)
                .where(*_owned(job_id, owner))
                .values(values)
                .returning(jobs.c.cancel_requested)
            ).first()
            if row is None:
                raise LeaseLost(f"job {job_id} is no longer held by {owner}")
            return bool(row[0])

        return self.index.write(job)

    def finish(
        self,
        job_id: int,
        owner: str,
        state: JobState,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        progress: tuple[int, int | None, Any] | None = None,
    ) -> bool:
        """Record the end of a run: done, failed or cancelled. False when the job was no
        longer ours (its lease expired and another runner has it)."""
        values: dict[str, Any] = {
            "state": state.value,
            "finished_at": now_ms(),
            # The owner stays, naming the node that ran the job last (nubis jobs list).
            "lease_expires_at": None,
            "result": None if result is None else json.dumps(result, sort_keys=True),
        }
        if error is not None:
            values["last_error"] = error
        if progress is not None:
            values.update(
                progress_done=progress[0],
                progress_total=progress[1],
                cursor_json=None if progress[2] is None else json.dumps(progress[2]),
            )
        return self._owned_update(job_id, owner, values)

    def release(
        self,
        job_id: int,
        owner: str,
        *,
        retry_in: float = 0.0,
        error: str | None = None,
        progress: tuple[int, int | None, Any] | None = None,
        count_attempt: bool = True,
    ) -> bool:
        """Put a running job back in the queue, due in ``retry_in`` seconds: after a failure
        that may pass, or when its runner stops (``count_attempt=False``: a clean stop is not
        the job's fault). The cursor in ``progress`` lets the next run resume."""
        values: dict[str, Any] = {
            "state": JobState.QUEUED.value,
            "lease_owner": None,
            "lease_expires_at": None,
            "not_before": now_ms() + int(retry_in * 1000),
        }
        if not count_attempt:
            values["attempts"] = jobs.c.attempts - 1
        if error is not None:
            values["last_error"] = error
        if progress is not None:
            values.update(
                progress_done=progress[0],
                progress_total=progress[1],
                cursor_json=None if progress[2] is None else json.dumps(progress[2]),
            )
        return self._owned_update(job_id, owner, values)

    def _owned_update(self, job_id: int, owner: str, values: dict[str, Any]) -> bool:
        def job(conn: Connection) -> bool:
            changed = conn.execute(update(jobs).where(*_owned(job_id, owner)).values(values))
            return bool(changed.rowcount)

        return self.index.write(job)

    # ------------------------------------------------------------------ operators
    def cancel(self, job_id: int) -> JobState | None:
        """Cancel a job: a queued one at once; a running one at its runner's next progress
        (it is asked to stop); a finished one stays as it is. The state it was found in;
        None when there is no such job."""

        def job(conn: Connection) -> JobState | None:
            row = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).first()
            if row is None:
                return None
            state = JobState(row[0])
            if state is JobState.QUEUED:
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(state=JobState.CANCELLED.value, finished_at=now_ms())
                )
            elif state is JobState.RUNNING:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(cancel_requested=1))
            return state

        return self.index.write(job)

    def get(self, job_id: int) -> Job | None:
        with self.index.reading() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return None if row is None else Job.from_row(row)

    def list(
        self,
        *,
        limit: int = 50,
        states: Sequence[JobState] | None = None,
        kind: str | None = None,
    ) -> list[Job]:
        """Newest first."""
        stmt = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
        if states:
            stmt = stmt.where(jobs.c.state.in_([s.value for s in states]))
        if kind:
            stmt = stmt.where(jobs.c.kind == kind)
        with self.index.reading() as conn:
            return [Job.from_row(row) for row in conn.execute(stmt)]

    def counts(self) -> dict[str, int]:
        with self.index.reading() as conn:
            rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
            return {state: count for state, count in rows}

    def prune(self, older_than_ms: int, kind: str | None = None) -> int:
        """Delete finished jobs (of ``kind``, or of every kind) that finished before
        ``older_than_ms``."""
        finished = [s.value for s in JobState if s.finished]
        which = [jobs.c.state.in_(finished), jobs.c.finished_at < older_than_ms]
        if kind is not None:
            which.append(jobs.c.kind == kind)

        def job(conn: Connection) -> int:
            gone = conn.execute(delete(jobs).where(*which))
            return int(gone.rowcount)

        return self.index.write(job)


def _owned(job_id: int, owner: str) -> tuple[Any, ...]:
    return (
        jobs.c.id == job_id,
        jobs.c.lease_owner == owner,
        jobs.c.state == JobState.RUNNING.value,
    )
