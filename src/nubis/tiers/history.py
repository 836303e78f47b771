"""What the archive held per storage tier over time: one snapshot a day (table
``storage_snapshots``, migration 0011).

The ``storage-snapshot`` job (jobs_schedule ``storage-snapshot=1d``; queued at each start of a
server as well, so a day without a running server is the only gap) counts objects and bytes per
tier from the index exactly as ``nubis storage report`` does (:func:`nubis.tiers.report.
usage_by_tier`) and keeps them under today's UTC date; a later snapshot of the same day replaces
the earlier one. The index keeps no older history, so a chart starts at the first snapshot.

Only counts are kept, not prices: a chart of cost over time prices every day at today's
``storage_prices``, which is what an operator comparing tiers wants to see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, delete, func, insert, select

from nubis.index.database import Index
from nubis.index.schema import storage_snapshots
from nubis.tiers.report import usage_by_tier
from nubis.tiers.rules import Tiers

__all__ = [
    "DaySnapshot",
    "latest_snapshot",
    "record_snapshot",
    "snapshots",
    "take_snapshot",
    "today",
]


@dataclass(frozen=True)
class DaySnapshot:
    """Objects and bytes per tier at the end of ``day`` (its last snapshot)."""

    day: date
    usage: dict[str, tuple[int, int]]

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.usage.values())


def today() -> date:
    return datetime.now(UTC).date()


def record_snapshot(index: Index, day: date, usage: dict[str, tuple[int, int]]) -> None:
    """Keep ``usage`` (tier -> objects, bytes) as ``day``'s snapshot, replacing an earlier one."""
    taken_at = time.time_ns() // 1_000_000
    rows = [
        {"day": day.isoformat(), "tier": tier, "objects": objects, "bytes": size,
         "taken_at": taken_at}
        for tier, (objects, size) in usage.items()
    ]  # fmt: skip

    def job(conn: Connection) -> None:
        conn.execute(delete(storage_snapshots).where(storage_snapshots.c.day == day.isoformat()))
        if rows:
            conn.execute(insert(storage_snapshots), rows)

    index.write(job)


def take_snapshot(index: Index, tiers: Tiers, day: date | None = None) -> dict[str, object]:
    """Count what each tier holds now and keep it as today's snapshot; the job's result."""
    usage = usage_by_tier(index, tiers)
    when = day or today()
    record_snapshot(index, when, usage)
    return {
        "day": when.isoformat(),
        "tiers": {tier: {"objects": o, "bytes": b} for tier, (o, b) in usage.items()},
    }


def snapshots(
    index: Index, *, days: int | None = None, until: date | None = None
) -> list[DaySnapshot]:
    """The daily snapshots, oldest first: the last ``days`` days up to ``until`` (default:
    today), or all of them."""
    stmt = select(
        storage_snapshots.c.day,
        storage_snapshots.c.tier,
        storage_snapshots.c.objects,
        storage_snapshots.c.bytes,
    ).order_by(storage_snapshots.c.day, storage_snapshots.c.tier)
    if days is not None:
        first = (until or today()) - timedelta(days=days - 1)
        stmt = stmt.where(storage_snapshots.c.day >= first.isoformat())
    if until is not None:
        stmt = stmt.where(storage_snapshots.c.day <= until.isoformat())
    found: dict[str, dict[str, tuple[int, int]]] = {}
    with index.reading() as conn:
        for day, tier, objects, size in conn.execute(stmt):
            found.setdefault(day, {})[tier] = (int(objects), int(size))
    return [DaySnapshot(date.fromisoformat(day), usage) for day, usage in found.items()]


def latest_snapshot(index: Index) -> DaySnapshot | None:
    """The most recent day's snapshot, or None before the first."""
    with index.reading() as conn:
        day = conn.execute(select(func.max(storage_snapshots.c.day))).scalar()
    if day is None:
        return None
    found = snapshots(index, days=1, until=date.fromisoformat(day))
    return found[0] if found else None
