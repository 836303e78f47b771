"""The index side of worklists (nubis.services.worklist): workitems and subscriptions.

Functions of a connection, so a state change, its subscriptions and its audit record commit in
one write transaction. The scope of a search is in its SQL, as for studies
(nubis.index.query_sql): the tenant's partition always, and for roles limited to grants only the
workitems of a granted patient or study, so a page holds only what the caller may see.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, Connection
from sqlalchemy.dialects import postgresql, sqlite

from nubis.index.schema import grants, workitem_subscriptions, workitems
from nubis.model.workitem import Columns, JsonDataSet
from nubis.model.workitem_search import Match, WorkitemQuery

__all__ = [
    "SubscriptionRow",
    "WorkitemRow",
    "find",
    "insert",
    "matching_uids",
    "save",
    "search",
    "subscribe",
    "subscriptions",
    "unsubscribe",
    "visible",
]


@dataclass(frozen=True)
class WorkitemRow:
    id: int
    uid: str
    state: str
    transaction_uid: str | None
    performer: str | None
    data: JsonDataSet


@dataclass(frozen=True)
class SubscriptionRow:
    ae_title: str
    target_uid: str
    deletion_lock: bool
    filter: str | None
    created_by: str
    created_at: int


def _compact(data: JsonDataSet) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _insert(conn: Connection, table: sa.Table, values: dict[str, Any]) -> Any:
    """An INSERT that can name a conflict (ON CONFLICT, which both engines speak)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).values(values)


def insert(
    conn: Connection, partition: str, uid: str, data: JsonDataSet, who: str, now: int
) -> bool:
    """Add a workitem; False when the tenant already has one of this UID (also when another
    node adds it at the same moment: ON CONFLICT, not a unique violation)."""
    stmt = _insert(
        conn,
        workitems,
        {
            "partition": partition,
            "workitem_uid": uid,
            "attrs": _compact(data),
            "created_by": who,
            "created_at": now,
            "updated_at": now,
            **asdict(Columns.of(data)),
        },
    ).on_conflict_do_nothing(index_elements=["partition", "workitem_uid"])
    # RETURNING tells an insert from a conflict on both engines (psycopg's rowcount is -1).
    return conn.execute(stmt.returning(workitems.c.id)).first() is not None


def find(conn: Connection, partition: str, uid: str, *, lock: bool = False) -> WorkitemRow | None:
    """A workitem of the tenant, its row locked until commit when ``lock`` (PostgreSQL; SQLite
    has one writer)."""
    stmt = sa.select(
        workitems.c.id,
        workitems.c.workitem_uid,
        workitems.c.state,
        workitems.c.transaction_uid,
        workitems.c.performer,
        workitems.c.attrs,
    ).where(workitems.c.partition == partition, workitems.c.workitem_uid == uid)
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        return None
    return WorkitemRow(row[0], row[1], row[2], row[3], row[4], json.loads(row[5]))


def save(
    conn: Connection,
    row_id: int,
    data: JsonDataSet,
    *,
    transaction_uid: str | None,
    performer: str | None,
    now: int,
) -> None:
    """Write a workitem's data set back, its columns with it."""
    conn.execute(
        sa.update(workitems)
        .where(workitems.c.id == row_id)
        .values(
            attrs=_compact(data),
            transaction_uid=transaction_uid,
            performer=performer,
            updated_at=now,
            **asdict(Columns.of(data)),
        )
    )


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _condition(match: Match) -> ColumnElement[bool]:
    column = workitems.c[match.column]
    if match.kind == "uids":
        return column.in_(match.values)
    if match.kind == "range":
        low, high = match.values
        bounds: list[ColumnElement[bool]] = [column.is_not(None)]
        if low is not None:
            bounds.append(column >= low)
        if high is not None:
            bounds.append(column <= high)
        return sa.and_(*bounds)
    (wanted,) = match.values
    assert wanted is not None
    if match.kind == "wildcard" and ("*" in wanted or "?" in wanted):
        return column.like(_like(wanted), escape="\\")
    return column == wanted


def _scope(partition: str, grantee: str | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [workitems.c.partition == partition]
    if grantee is not None:
        mine = (grants.c.subject == grantee, grants.c.tenant == partition)
        conditions.append(
            sa.or_(
                workitems.c.patient_id.in_(
                    sa.select(grants.c.patient_id).where(*mine, grants.c.patient_id.is_not(None))
                ),
                workitems.c.study_uid.in_(
                    sa.select(grants.c.study_uid).where(*mine, grants.c.study_uid.is_not(None))
                ),
            )
        )
    return conditions


def partitions_scheduling(conn: Connection, code_value: str, code_scheme: str) -> list[str]:
    """The tenants holding a SCHEDULED workitem of this Scheduled Workitem Code: where the
    analyzers' scan searches the worklist (as each tenant's analyzer) for work."""
    return list(
        conn.execute(
            sa.select(workitems.c.partition)
            .where(
                workitems.c.state == "SCHEDULED",
                workitems.c.workitem_code_value == code_value,
                workitems.c.workitem_code_scheme == code_scheme,
            )
            .distinct()
        ).scalars()
    )


def visible(conn: Connection, partition: str, grantee: str | None, uid: str) -> bool:
    """Whether the workitem is in the scope (for one read by a grant-limited role)."""
    stmt = sa.select(workitems.c.id).where(
        *_scope(partition, grantee), workitems.c.workitem_uid == uid
    )
    return conn.execute(stmt).first() is not None


def search(
    conn: Connection, partition: str, grantee: str | None, query: WorkitemQuery
) -> tuple[list[JsonDataSet], bool]:
    """One page of matching workitems, oldest first, and whether more follow."""
    stmt = (
        sa.select(workitems.c.attrs)
        .where(*_scope(partition, grantee), *(_condition(m) for m in query.matches))
        .order_by(workitems.c.id)
        .limit(query.limit + 1)
        .offset(query.offset)
    )
    rows = [json.loads(r[0]) for r in conn.execute(stmt)]
    return rows[: query.limit], len(rows) > query.limit


def matching_uids(
    conn: Connection, partition: str, query: WorkitemQuery, *, only: str | None = None
) -> list[str]:
    """UIDs of the tenant's workitems not yet final that ``query`` matches (``only``: whether
    that one does), for the workitems a worklist subscription covers (PS3.4 CC.2.3.1)."""
    stmt = sa.select(workitems.c.workitem_uid).where(
        workitems.c.partition == partition,
        workitems.c.state.in_(("SCHEDULED", "IN PROGRESS")),
        *(_condition(m) for m in query.matches),
    )
    if only is not None:
        stmt = stmt.where(workitems.c.workitem_uid == only)
    return [str(r[0]) for r in conn.execute(stmt)]


def subscribe(
    conn: Connection,
    partition: str,
    ae_title: str,
    target_uid: str,
    *,
    deletion_lock: bool,
    filter_text: str | None,
    who: str,
    now: int,
) -> None:
    """Add the subscription, or renew its deletion lock and filter (PS3.4 CC.2.3.1)."""
    stmt = _insert(
        conn,
        workitem_subscriptions,
        {
            "partition": partition,
            "ae_title": ae_title,
            "target_uid": target_uid,
            "deletion_lock": deletion_lock,
            "filter": filter_text,
            "created_by": who,
            "created_at": now,
        },
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["partition", "ae_title", "target_uid"],
            set_={"deletion_lock": stmt.excluded.deletion_lock, "filter": stmt.excluded.filter},
        )
    )


def unsubscribe(
    conn: Connection, partition: str, ae_title: str, target_uid: str | None = None
) -> int:
    """Remove one subscription of ``ae_title``, or every one (``target_uid`` None)."""
    stmt = sa.delete(workitem_subscriptions).where(
        workitem_subscriptions.c.partition == partition,
        workitem_subscriptions.c.ae_title == ae_title,
    )
    if target_uid is not None:
        stmt = stmt.where(workitem_subscriptions.c.target_uid == target_uid)
    return int(conn.execute(stmt).rowcount or 0)


def subscriptions(
    conn: Connection, partition: str, *, targets: tuple[str, ...] | None = None
) -> list[SubscriptionRow]:
    """The tenant's subscriptions, oldest first; ``targets``: only to those UIDs."""
    stmt = (
        sa.select(
            workitem_subscriptions.c.ae_title,
            workitem_subscriptions.c.target_uid,
            workitem_subscriptions.c.deletion_lock,
            workitem_subscriptions.c.filter,
            workitem_subscriptions.c.created_by,
            workitem_subscriptions.c.created_at,
        )
        .where(workitem_subscriptions.c.partition == partition)
        .order_by(workitem_subscriptions.c.id)
    )
    if targets is not None:
        stmt = stmt.where(workitem_subscriptions.c.target_uid.in_(targets))
    return [
        SubscriptionRow(str(r[0]), str(r[1]), bool(r[2]), r[3], str(r[4]), int(r[5]))
        for r in conn.execute(stmt)
    ]
