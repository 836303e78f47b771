"""The replication outbox's SQL: entries written with the change, read and retired by the job.

Entries are added on the driver's cursor inside the store's or delete's own transaction
(nubis.index.database), after the study's row lock is taken: within a study, ``seq`` order is
commit order on both engines, which is the order the ``replicate`` job applies them in
(nubis.replication.job). Across studies no order is promised or needed.

Besides stores and deletes (nubis.index.database), three changes add entries in their own
commits: a correction one per study it changed (nubis.services.corrections, its attributes as
they are after it), a crypto-shred one per study of the patient (nubis.services.shredding), a
move between storage tiers one per study (nubis.tiers.lifecycle; informational: the replica
keeps its own tiers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, delete, func, or_, select, update

from nubis.index.driver import DriverCursor
from nubis.index.schema import replication_outbox as outbox
from nubis.index.schema import replication_state as state

__all__ = [
    "CORRECT",
    "DELETE",
    "SHRED",
    "STORE",
    "TIER",
    "Entry",
    "ReplicationStatus",
    "add",
    "demote",
    "due_studies",
    "entries_of",
    "failed",
    "promote",
    "promoted",
    "replicated",
    "status",
    "take_lease",
    "unpark",
]

STORE = "store"
DELETE = "delete"
CORRECT = "correct"  # detail: {"correction": id, "reason": text, "set": {keyword: text|null}}
SHRED = "shred"  # detail: {"patient": Patient ID}
TIER = "tier"  # detail: {"tier": name}; recorded, not applied (the replica keeps its tiers)

_ADD_SQL = (
    "INSERT INTO replication_outbox (op, partition, study_uid, series_uid, sop_instance_uid, "
    "created_at, due_at, attempts, next_attempt_at, parked, detail) "
    "VALUES (:op, :p, :study, :series, :sop, :now, :due, 0, 0, 0, :detail)"
)


@dataclass(frozen=True)
class Entry:
    seq: int
    op: str
    partition: str
    study_uid: str
    series_uid: str | None
    sop_instance_uid: str | None
    created_at: int
    due_at: int
    attempts: int
    detail: str | None = None


@dataclass(frozen=True)
class ReplicationStatus:
    """What ``nubis replication status`` shows. Times in ms since the epoch."""

    backlog: int  # entries due and not yet confirmed by the replica
    oldest_due_at: int | None  # the lag runs from here
    held_deletes: int  # deletes held back (replicate_delete_delay_days), not yet due
    parked: int  # entries the replica refused too often: they wait for `replication retry`
    verified_seq: int | None  # every change up to this entry is at the replica, verified
    verified_at: int | None
    last_error: str | None
    last_error_at: int | None

    def lag_seconds(self, now_ms: int) -> float:
        return 0.0 if self.oldest_due_at is None else max(0, now_ms - self.oldest_due_at) / 1000


def add(
    cursor: DriverCursor,
    op: str,
    partition: str,
    study_uid: str,
    series_uid: str | None,
    sop_instance_uid: str | None,
    *,
    now: int,
    delay_ms: int = 0,
    detail: str | None = None,
) -> None:
    """Queue one change for the replica (in the caller's transaction); ``detail`` is the JSON
    of what a correction, shred or tier change needs beyond the UIDs."""
    cursor.execute(
        _ADD_SQL,
        {
            "op": op,
            "p": partition,
            "study": study_uid,
            "series": series_uid,
            "sop": sop_instance_uid,
            "now": now,
            "due": now + delay_ms,
            "detail": detail,
        },
    )


_COLUMNS = (
    outbox.c.seq,
    outbox.c.op,
    outbox.c.partition,
    outbox.c.study_uid,
    outbox.c.series_uid,
    outbox.c.sop_instance_uid,
    outbox.c.created_at,
    outbox.c.due_at,
    outbox.c.attempts,
    outbox.c.detail,
)


def due_studies(conn: Connection, now: int, limit: int) -> list[tuple[str, str]]:
    """(partition, study UID) of studies whose first entry may be applied now, oldest first.

    Only a study's first entry decides: one waiting (backoff, parked, a delete held back)
    holds the study's later entries back, so they are never applied out of order."""
    first = (
        select(func.min(outbox.c.seq).label("seq"))
        .group_by(outbox.c.partition, outbox.c.study_uid)
        .subquery()
    )
    rows = conn.execute(
        select(outbox.c.partition, outbox.c.study_uid)
        .join(first, first.c.seq == outbox.c.seq)
        .where(outbox.c.parked == 0, outbox.c.due_at <= now, outbox.c.next_attempt_at <= now)
        .order_by(outbox.c.seq)
        .limit(limit)
    ).all()
    return [(r[0], r[1]) for r in rows]


def entries_of(conn: Connection, partition: str, study_uid: str, limit: int) -> list[Entry]:
    """The study's entries in order, the first ``limit``."""
    rows = conn.execute(
        select(*_COLUMNS)
        .where(outbox.c.partition == partition, outbox.c.study_uid == study_uid)
        .order_by(outbox.c.seq)
        .limit(limit)
    ).all()
    return [Entry(**row._mapping) for row in rows]


def replicated(conn: Connection, seq: int, now: int) -> None:
    """The replica holds entry ``seq``'s change, verified: retire it."""
    conn.execute(delete(outbox).where(outbox.c.seq == seq))
    highest = case((state.c.verified_seq > seq, state.c.verified_seq), else_=seq)
    conn.execute(update(state).where(state.c.id == 1).values(verified_seq=highest, verified_at=now))


def failed(conn: Connection, seq: int, reason: str, now: int, retry_at: int, *, park: bool) -> None:
    """Entry ``seq`` failed: try it again at ``retry_at``, or not before an operator says so
    (``park``); the reason becomes the last error."""
    conn.execute(
        update(outbox)
        .where(outbox.c.seq == seq)
        .values(
            attempts=outbox.c.attempts + 1,
            next_attempt_at=retry_at,
            parked=1 if park else 0,
            last_error=reason,
        )
    )
    conn.execute(update(state).where(state.c.id == 1).values(last_error=reason, last_error_at=now))


def take_lease(conn: Connection, owner: str, now: int, seconds: float) -> bool:
    """Hold (or renew) the drain lease for ``seconds``; False while another job holds it."""
    taken = conn.execute(
        update(state)
        .where(
            state.c.id == 1,
            or_(
                state.c.lease_owner.is_(None),
                state.c.lease_owner == owner,
                state.c.lease_expires_at < now,
            ),
        )
        .values(lease_owner=owner, lease_expires_at=now + int(seconds * 1000))
    ).rowcount
    return bool(taken)


def release_lease(conn: Connection, owner: str) -> None:
    conn.execute(
        update(state)
        .where(state.c.id == 1, state.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


def unpark(conn: Connection) -> int:
    """Make every parked entry due again, its attempts counted afresh; how many."""
    return int(
        conn.execute(
            update(outbox)
            .where(outbox.c.parked == 1)
            .values(parked=0, attempts=0, next_attempt_at=0)
        ).rowcount
    )


def status(conn: Connection, now: int) -> ReplicationStatus:
    backlog, oldest = conn.execute(
        select(func.count(), func.min(outbox.c.due_at)).where(outbox.c.due_at <= now)
    ).one()
    held = conn.execute(
        select(func.count()).where(outbox.c.due_at > now, outbox.c.op == DELETE)
    ).scalar_one()
    parked = conn.execute(select(func.count()).where(outbox.c.parked == 1)).scalar_one()
    first_open = conn.execute(select(func.min(outbox.c.seq))).scalar_one()
    row: Any = conn.execute(
        select(
            state.c.verified_seq, state.c.verified_at, state.c.last_error, state.c.last_error_at
        ).where(state.c.id == 1)
    ).first() or (None, None, None, None)
    verified_seq, verified_at, last_error, last_error_at = row
    if first_open is not None and verified_seq is not None:
        # The point up to which every change is at the replica: before the oldest still open.
        verified_seq = min(verified_seq, first_open - 1)
    return ReplicationStatus(
        int(backlog),
        oldest,
        int(held),
        int(parked),
        verified_seq,
        verified_at,
        last_error,
        last_error_at,
    )


def promoted(conn: Connection) -> tuple[int, str] | None:
    """When and by whom this archive, a replica, was promoted to a primary; None if never."""
    row = conn.execute(
        select(state.c.promoted_at, state.c.promoted_by).where(state.c.id == 1)
    ).first()
    if row is None or row[0] is None:
        return None
    return int(row[0]), str(row[1] or "")


def promote(conn: Connection, who: str, now: int) -> bool:
    """Record the promotion; False when it was promoted already (the first time stands)."""
    return bool(
        conn.execute(
            update(state)
            .where(state.c.id == 1, state.c.promoted_at.is_(None))
            .values(promoted_at=now, promoted_by=who)
        ).rowcount
    )


def demote(conn: Connection) -> bool:
    """Forget the promotion: the archive is a read-only replica again (of replica_of)."""
    return bool(
        conn.execute(
            update(state)
            .where(state.c.id == 1, state.c.promoted_at.is_not(None))
            .values(promoted_at=None, promoted_by=None)
        ).rowcount
    )
