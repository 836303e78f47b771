"""The change feed's SQL: entries written in the change's own commit, read in commit order.

Why ``seq`` is commit order (issue 15): a client pages with ``since=<last seq seen>`` and must
never miss an entry, so no entry may become visible with a lower seq than one already seen.

- SQLite: one writer at a time (the group commit's thread, and SQLite's own lock across
  processes), so entries are numbered in the order their transactions commit.
- PostgreSQL: an identity is drawn at insert time, not at commit, so two nodes could commit seq
  12 before seq 11 and a reader between the two commits would page past 11 for good. The entry
  is therefore the change's last statement, taken under a transaction-scoped advisory lock
  (``FEED_LOCK``) held until commit: the next change draws its seq only once this one has
  committed (PostgreSQL makes a transaction visible before it releases its locks). A change
  that rolls back leaves a gap, which hides nothing. The lock is held for the insert and the
  commit only; every other lock of the transaction (the study's row, the audit chain's lock)
  was taken before it, so it adds no deadlock.

Scope is in the SQL, as for every read (nubis.index.query_sql): the partition, a grantee's
grants (by study, or by patient through the study's row; a grant narrowed to series covers that
series' entries and the study's own), and studies held in quarantine hidden from non-admins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from nubis.index.driver import driver_cursor, is_postgresql
from nubis.index.schema import change_feed as feed
from nubis.index.schema import change_feed_state, grants, quarantined_studies, studies

__all__ = [
    "ACTIONS",
    "CREATE",
    "CURRENT",
    "DELETE",
    "DELETED",
    "FEED_LOCK",
    "SHRED",
    "SHREDDED",
    "UPDATE",
    "Change",
    "Entry",
    "add",
    "expire",
    "expired_through",
    "has_older_than",
    "latest",
    "page",
    "study_modalities",
]

CREATE, UPDATE, DELETE, SHRED = "create", "update", "delete", "shred"
ACTIONS = (CREATE, UPDATE, DELETE, SHRED)
CURRENT, DELETED, SHREDDED = "current", "deleted", "shredded"
# PostgreSQL advisory lock key, beside nubis.index.database's (unique within nubis).
FEED_LOCK = 0x6E75_6203

_ADD_SQL = (
    "INSERT INTO change_feed (action, state, detail, partition, study_uid, series_uid, "
    "sop_instance_uid, modality, created_at) "
    "VALUES (:action, :state, :detail, :p, :study, :series, :sop, :modality, :now)"
)


@dataclass(frozen=True)
class Change:
    """One change, as its writer knows it."""

    action: str
    state: str
    partition: str
    study_uid: str
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    modality: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Entry:
    """One entry of the feed, as readers see it."""

    seq: int
    action: str
    state: str
    detail: str | None
    partition: str
    study_uid: str
    series_uid: str | None
    sop_instance_uid: str | None
    modality: str | None
    created_at: int


def add(conn: Connection, changes: Sequence[Change], now: int) -> None:
    """Append ``changes`` in the caller's transaction, as its last statement (see the module
    docs: on PostgreSQL the lock taken here is what makes seq commit order)."""
    if not changes:
        return
    if is_postgresql(conn):
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({FEED_LOCK})")
    driver_cursor(conn).executemany(
        _ADD_SQL,
        [
            {
                "action": c.action,
                "state": c.state,
                "detail": c.detail,
                "p": c.partition,
                "study": c.study_uid,
                "series": c.series_uid,
                "sop": c.sop_instance_uid,
                "modality": c.modality,
                "now": now,
            }
            for c in changes
        ],
    )


_COLUMNS = (
    feed.c.seq,
    feed.c.action,
    feed.c.state,
    feed.c.detail,
    feed.c.partition,
    feed.c.study_uid,
    feed.c.series_uid,
    feed.c.sop_instance_uid,
    feed.c.modality,
    feed.c.created_at,
)


def _scope(partition: str, grantee: str | None, hide_quarantined: bool) -> list[Any]:
    where: list[Any] = [feed.c.partition == partition]
    if grantee is not None:
        patient_of_study = (
            sa.select(studies.c.patient_id)
            .where(studies.c.partition == feed.c.partition, studies.c.study_uid == feed.c.study_uid)
            .scalar_subquery()
        )
        where.append(
            sa.exists().where(
                grants.c.subject == grantee,
                grants.c.tenant == feed.c.partition,
                sa.or_(
                    grants.c.study_uid == feed.c.study_uid,
                    grants.c.patient_id == patient_of_study,
                ),
                sa.or_(
                    feed.c.series_uid.is_(None),
                    grants.c.series_uid.is_(None),
                    grants.c.series_uid == feed.c.series_uid,
                ),
            )
        )
    if hide_quarantined:
        where.append(
            ~sa.exists().where(
                quarantined_studies.c.study_pk == studies.c.id,
                studies.c.partition == feed.c.partition,
                studies.c.study_uid == feed.c.study_uid,
            )
        )
    return where


def page(
    conn: Connection,
    partition: str,
    since: int,
    limit: int,
    *,
    grantee: str | None = None,
    hide_quarantined: bool = True,
) -> list[Entry]:
    """The first ``limit`` entries after ``since`` that the scope holds, in seq order."""
    rows: Sequence[Any] = conn.execute(
        sa.select(*_COLUMNS)
        .where(feed.c.seq > since, *_scope(partition, grantee, hide_quarantined))
        .order_by(feed.c.seq)
        .limit(limit)
    ).all()
    return [Entry(*row) for row in rows]


def latest(
    conn: Connection, partition: str, *, grantee: str | None = None, hide_quarantined: bool = True
) -> Entry | None:
    """The scope's newest entry (None: none yet)."""
    row: Any = conn.execute(
        sa.select(*_COLUMNS)
        .where(*_scope(partition, grantee, hide_quarantined))
        .order_by(feed.c.seq.desc())
        .limit(1)
    ).first()
    return None if row is None else Entry(*row)


def expired_through(conn: Connection) -> int:
    """The highest seq the retention expiry removed (0: none)."""
    value = conn.execute(
        sa.select(change_feed_state.c.expired_through).where(change_feed_state.c.id == 1)
    ).scalar()
    return int(value or 0)


def has_older_than(conn: Connection, before: int) -> bool:
    """Whether an entry older than ``before`` (ms) is left: the expiry has work."""
    found = conn.execute(sa.select(feed.c.seq).where(feed.c.created_at < before).limit(1))
    return found.first() is not None


def expire(conn: Connection, before: int) -> int:
    """Remove entries older than ``before`` (ms); how many.

    Removes a prefix of the sequence (everything up to the newest entry written before
    ``before``), so "expired through N" stays exact even where clocks of nodes differ."""
    through = conn.execute(sa.select(sa.func.max(feed.c.seq)).where(feed.c.created_at < before))
    last = through.scalar()
    if last is None:
        return 0
    removed = conn.execute(sa.delete(feed).where(feed.c.seq <= last)).rowcount
    conn.execute(
        sa.update(change_feed_state)
        .where(change_feed_state.c.id == 1, change_feed_state.c.expired_through < last)
        .values(expired_through=last)
    )
    return int(removed)


def study_modalities(conn: Connection, partition: str, study_uid: str) -> set[str] | None:
    """The study's Modalities in Study now (None: no such study any more)."""
    value = conn.execute(
        sa.select(studies.c.modalities).where(
            studies.c.partition == partition, studies.c.study_uid == study_uid
        )
    ).first()
    if value is None:
        return None
    return {m for m in str(value[0] or "").replace("\\", ",").split(",") if m}
