"""SQL of the UPS event reports waiting for their subscribers (table ``workitem_events``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from nubis.index.schema import workitem_events, workitem_subscriptions

__all__ = ["QueuedReport", "delete", "enqueue", "forget_ae", "pending"]


@dataclass(frozen=True)
class QueuedReport:
    id: int
    workitem_uid: str
    report: dict[str, Any]


def enqueue(
    conn: Connection,
    partition: str,
    workitem_uid: str,
    report: dict[str, Any],
    now: int,
    *,
    ae_title: str | None = None,
) -> int:
    """Queue ``report`` for ``ae_title``, or for every AE subscribed to the workitem; how many
    were queued."""
    if ae_title is not None:
        titles = [ae_title]
    else:
        titles = [
            str(r[0])
            for r in conn.execute(
                sa.select(workitem_subscriptions.c.ae_title)
                .where(
                    workitem_subscriptions.c.partition == partition,
                    workitem_subscriptions.c.target_uid == workitem_uid,
                )
                .order_by(workitem_subscriptions.c.id)
            )
        ]
    if titles:
        text = json.dumps(report, separators=(",", ":"))
        conn.execute(
            sa.insert(workitem_events),
            [
                {
                    "partition": partition,
                    "ae_title": title,
                    "workitem_uid": workitem_uid,
                    "report": text,
                    "created_at": now,
                }
                for title in titles
            ],
        )
    return len(titles)


def pending(
    conn: Connection, partition: str, ae_title: str, skip: frozenset[int], limit: int
) -> list[QueuedReport]:
    """The reports queued for ``ae_title``, oldest first, but those in ``skip``. Sent reports
    are deleted, so no cursor is kept: ids are not handed out in commit order across
    transactions on PostgreSQL (a cursor could pass over one committed late), and SQLite
    reuses the ids of deleted rows."""
    stmt = (
        sa.select(workitem_events.c.id, workitem_events.c.workitem_uid, workitem_events.c.report)
        .where(
            workitem_events.c.partition == partition,
            workitem_events.c.ae_title == ae_title,
        )
        .order_by(workitem_events.c.id)
        .limit(limit)
    )
    if skip:
        stmt = stmt.where(workitem_events.c.id.notin_(sorted(skip)))
    return [QueuedReport(int(r[0]), str(r[1]), json.loads(r[2])) for r in conn.execute(stmt)]


def delete(conn: Connection, ids: list[int]) -> None:
    """Forget reports sent (or no longer for anyone)."""
    if ids:
        conn.execute(sa.delete(workitem_events).where(workitem_events.c.id.in_(ids)))


def forget_ae(conn: Connection, partition: str, ae_title: str) -> None:
    """Drop every report queued for ``ae_title`` (it unsubscribed from everything)."""
    conn.execute(
        sa.delete(workitem_events).where(
            workitem_events.c.partition == partition, workitem_events.c.ae_title == ae_title
        )
    )
