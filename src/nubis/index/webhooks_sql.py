"""Webhook subscriptions and their dead letters in the index (nubis.services.webhooks manages
them, nubis.events.delivery drains the change feed into them).

A subscription's delivery state is one cursor (the last entry delivered, skipped by its filters
or given up on) and the attempts at the entry after it: entries reach a receiver in feed order,
each at least once. A run holds the subscription's lease, so two nodes never deliver to one
receiver at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from nubis.index.schema import change_feed
from nubis.index.schema import webhook_dead_letters as dead
from nubis.index.schema import webhook_subscriptions as subs

__all__ = [
    "DeadLetter",
    "Subscription",
    "add",
    "advance",
    "any_subscription",
    "by_name",
    "dead_letter",
    "dead_letters",
    "due_replays",
    "entries_after",
    "failed",
    "forget_dead_letters",
    "listed",
    "release_lease",
    "remove",
    "replay",
    "replay_failed",
    "take_lease",
]


@dataclass(frozen=True)
class Subscription:
    id: int
    name: str
    url: str
    secret: str  # encrypted (nubis.crypto.webhook_secrets)
    tenant: str
    role: str
    actions: str
    modalities: str
    match: str
    created_by: str
    created_at: int
    cursor: int
    attempts: int
    next_attempt_at: int
    last_error: str | None
    delivered: int

    def to_dict(self) -> dict[str, Any]:
        """What admins are shown: everything but the secret."""
        return {
            "name": self.name,
            "url": self.url,
            "tenant": self.tenant,
            "role": self.role,
            "events": [a for a in self.actions.split(",") if a],
            "modalities": [m for m in self.modalities.split(",") if m],
            "match": self.match,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "cursor": self.cursor,
            "delivered": self.delivered,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class DeadLetter:
    subscription: str
    seq: int
    attempts: int
    last_error: str | None
    failed_at: int
    replay: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "subscription": self.subscription,
            "sequence": self.seq,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "failed_at": self.failed_at,
            "replay_requested": self.replay,
        }


_SUB_COLUMNS = (
    subs.c.id,
    subs.c.name,
    subs.c.url,
    subs.c.secret,
    subs.c.tenant,
    subs.c.role,
    subs.c.actions,
    subs.c.modalities,
    subs.c.match,
    subs.c.created_by,
    subs.c.created_at,
    subs.c.cursor,
    subs.c.attempts,
    subs.c.next_attempt_at,
    subs.c.last_error,
    subs.c.delivered,
)


def add(conn: Connection, values: dict[str, Any], now: int) -> None:
    """A new subscription, delivered what the feed gets from now on (its cursor starts at the
    newest entry: a subscription is not sent the archive's history)."""
    newest = conn.execute(sa.select(sa.func.max(change_feed.c.seq))).scalar() or 0
    conn.execute(
        sa.insert(subs).values(
            **values,
            created_at=now,
            cursor=newest,
            attempts=0,
            next_attempt_at=0,
            delivered=0,
        )
    )


def listed(conn: Connection, tenant: str | None = None) -> list[Subscription]:
    stmt = sa.select(*_SUB_COLUMNS).order_by(subs.c.name)
    if tenant is not None:
        stmt = stmt.where(subs.c.tenant == tenant)
    rows: Sequence[Any] = conn.execute(stmt).all()
    return [Subscription(*row) for row in rows]


def any_subscription(conn: Connection) -> bool:
    return conn.execute(sa.select(subs.c.id).limit(1)).first() is not None


def by_name(conn: Connection, name: str) -> Subscription | None:
    row: Any = conn.execute(sa.select(*_SUB_COLUMNS).where(subs.c.name == name)).first()
    return None if row is None else Subscription(*row)


def remove(conn: Connection, sub_id: int) -> None:
    conn.execute(sa.delete(dead).where(dead.c.subscription_id == sub_id))
    conn.execute(sa.delete(subs).where(subs.c.id == sub_id))


def take_lease(conn: Connection, sub_id: int, owner: str, now: int, seconds: float) -> bool:
    """Hold (or renew) the subscription's delivery lease; False while another run holds it."""
    taken = conn.execute(
        sa.update(subs)
        .where(
            subs.c.id == sub_id,
            sa.or_(
                subs.c.lease_owner.is_(None),
                subs.c.lease_owner == owner,
                subs.c.lease_expires_at < now,
            ),
        )
        .values(lease_owner=owner, lease_expires_at=now + int(seconds * 1000))
    ).rowcount
    return bool(taken)


def release_lease(conn: Connection, sub_id: int, owner: str) -> None:
    conn.execute(
        sa.update(subs)
        .where(subs.c.id == sub_id, subs.c.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None)
    )


def entries_after(conn: Connection, partition: str, seq: int) -> bool:
    """Whether the partition's feed has any entry after ``seq`` (no scope, no record: it
    tells a run whether there is anything to read through the service)."""
    found = conn.execute(
        sa.select(change_feed.c.seq)
        .where(change_feed.c.partition == partition, change_feed.c.seq > seq)
        .limit(1)
    ).first()
    return found is not None


def advance(conn: Connection, sub_id: int, seq: int, delivered: int) -> None:
    """Entries up to ``seq`` are done with: ``delivered`` of them taken by the receiver, the
    rest skipped by the filters."""
    values: dict[str, Any] = {
        "cursor": seq,
        "attempts": 0,
        "next_attempt_at": 0,
        "delivered": subs.c.delivered + delivered,
    }
    if delivered:
        values["last_error"] = None
    conn.execute(sa.update(subs).where(subs.c.id == sub_id, subs.c.cursor < seq).values(values))


def failed(conn: Connection, sub_id: int, reason: str, retry_at: int) -> None:
    """An attempt at the entry after the cursor failed: try again at ``retry_at``."""
    conn.execute(
        sa.update(subs)
        .where(subs.c.id == sub_id)
        .values(attempts=subs.c.attempts + 1, next_attempt_at=retry_at, last_error=reason)
    )


def dead_letter(
    conn: Connection, sub_id: int, seqs: list[int], attempts: int, reason: str, now: int
) -> None:
    """Give up on the entries ``seqs`` (kept as dead letters) and move past them."""
    conn.execute(
        sa.insert(dead),
        [
            {
                "subscription_id": sub_id,
                "seq": seq,
                "attempts": attempts,
                "last_error": reason,
                "failed_at": now,
                "replay": 0,
            }
            for seq in seqs
        ],
    )
    conn.execute(
        sa.update(subs)
        .where(subs.c.id == sub_id)
        .values(cursor=max(seqs), attempts=0, next_attempt_at=0, last_error=reason)
    )


def dead_letters(conn: Connection, tenant: str | None, name: str | None) -> list[DeadLetter]:
    stmt = (
        sa.select(subs.c.name, dead.c.seq, dead.c.attempts, dead.c.last_error, dead.c.failed_at)
        .add_columns(dead.c.replay == 1)
        .join(subs, subs.c.id == dead.c.subscription_id)
        .order_by(subs.c.name, dead.c.seq)
    )
    if tenant is not None:
        stmt = stmt.where(subs.c.tenant == tenant)
    if name is not None:
        stmt = stmt.where(subs.c.name == name)
    return [DeadLetter(*row) for row in conn.execute(stmt).all()]


def replay(conn: Connection, sub_id: int, seq: int | None) -> int:
    """Mark the subscription's dead letters (or the one of entry ``seq``) for another attempt
    by the next delivery run; how many."""
    stmt = sa.update(dead).where(dead.c.subscription_id == sub_id)
    if seq is not None:
        stmt = stmt.where(dead.c.seq == seq)
    return int(conn.execute(stmt.values(replay=1)).rowcount)


def due_replays(conn: Connection, sub_id: int, limit: int) -> list[int]:
    return list(
        conn.execute(
            sa.select(dead.c.seq)
            .where(dead.c.subscription_id == sub_id, dead.c.replay == 1)
            .order_by(dead.c.seq)
            .limit(limit)
        ).scalars()
    )


def forget_dead_letters(conn: Connection, sub_id: int, seqs: list[int]) -> None:
    conn.execute(sa.delete(dead).where(dead.c.subscription_id == sub_id, dead.c.seq.in_(seqs)))


def replay_failed(conn: Connection, sub_id: int, seqs: list[int], reason: str, now: int) -> None:
    conn.execute(
        sa.update(dead)
        .where(dead.c.subscription_id == sub_id, dead.c.seq.in_(seqs))
        .values(replay=0, attempts=dead.c.attempts + 1, last_error=reason, failed_at=now)
    )
