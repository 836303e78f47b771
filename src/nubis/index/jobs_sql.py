"""A queued job's row (the ``jobs`` table, nubis.jobs.store), for ``JobStore.enqueue`` and for
writes that queue a job in their own transaction on the driver's cursor (a correction, or a
store, queueing the re-key it makes necessary: nubis.index.rekey_sql)."""

from __future__ import annotations

import json
from typing import Any

from nubis.index.driver import DriverCursor

__all__ = ["insert_queued", "queued_row"]


def queued_row(
    kind: str,
    params: dict[str, Any] | None,
    *,
    now: int,
    unique_key: str | None = None,
    max_attempts: int = 3,
    created_by: str | None = None,
    not_before: int | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "params": json.dumps(params or {}, sort_keys=True),
        "state": "queued",
        "unique_key": unique_key,
        "progress_done": 0,
        "attempts": 0,
        "max_attempts": max_attempts,
        "cancel_requested": 0,
        "not_before": now if not_before is None else not_before,
        "created_at": now,
        "created_by": created_by,
    }


def insert_queued(cursor: DriverCursor, row: dict[str, Any]) -> int:
    """Insert a :func:`queued_row`; its id."""
    names = ", ".join(row)
    values = ", ".join(f":{name}" for name in row)
    found = cursor.execute(
        f"INSERT INTO jobs ({names}) VALUES ({values}) RETURNING id", row
    ).fetchone()
    return int(found[0])
