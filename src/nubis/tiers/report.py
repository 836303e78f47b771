"""``nubis storage report``: objects, bytes and monthly cost per tier, and a projection.

Counts come from the index (one grouped query), not from listing the store: the index knows
each object's tier and size, and listing millions of S3 objects would cost requests and
minutes. Sizes are the objects' own; encrypted blobs take 1 KiB plus 16 bytes per 64 KiB more
(0.03 % of a large object). A GB is 2^30 bytes, as AWS bills it.

The projection grows every tier by the same monthly rate, compounded: it assumes the mix of
tiers stays as it is (which the lifecycle rules roughly keep once they have run for a while).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from nubis.index.database import Index
from nubis.index.schema import instance_tiers, instances
from nubis.tiers.rules import Tiers

__all__ = ["StorageReport", "TierUsage", "build_report", "parse_growth", "usage_by_tier"]

GB = 1 << 30
_GROWTH = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*(?:/\s*(?:month|mo|m))?\s*\Z", re.IGNORECASE)


def parse_growth(text: str) -> float:
    """``5%/month``, ``5%`` or ``0.05`` -> 0.05 (a monthly rate)."""
    m = _GROWTH.match(text)
    if not m:
        raise ValueError(f"growth {text!r}: expected a monthly rate such as 5%/month or 0.05")
    value = float(m[1])
    return value / 100 if m[2] else value


@dataclass(frozen=True)
class TierUsage:
    tier: str
    target: str
    objects: int
    bytes: int
    price_per_gb_month: float | None
    monthly_cost: float | None


@dataclass(frozen=True)
class StorageReport:
    tiers: list[TierUsage]
    objects: int
    bytes: int
    monthly_cost: float
    unpriced_tiers: list[str]
    growth_per_month: float
    months: int
    # (month, bytes, monthly cost) for month 0 (now) .. months.
    projection: list[tuple[int, int, float]] = field(default_factory=list)

    @property
    def projected_monthly_cost(self) -> float:
        return self.projection[-1][2] if self.projection else self.monthly_cost

    @property
    def cost_over_months(self) -> float:
        """What the next ``months`` months cost together (storage only)."""
        return sum(cost for _, _, cost in self.projection[:-1]) if self.months else 0.0

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["projection"] = [
            {"month": m, "bytes": b, "monthly_cost": round(c, 4)} for m, b, c in self.projection
        ]
        data["projected_monthly_cost"] = round(self.projected_monthly_cost, 4)
        data["cost_over_months"] = round(self.cost_over_months, 4)
        data["monthly_cost"] = round(self.monthly_cost, 4)
        for tier in data["tiers"]:
            if tier["monthly_cost"] is not None:
                tier["monthly_cost"] = round(tier["monthly_cost"], 4)
        return data


def usage_by_tier(index: Index, tiers: Tiers) -> dict[str, tuple[int, int]]:
    """tier name -> (objects, bytes), from the index; every configured tier is present."""
    tier = func.coalesce(instance_tiers.c.tier, tiers.default.name)
    with index.reading() as conn:
        rows = conn.execute(
            select(tier, func.count(), func.coalesce(func.sum(instances.c.size), 0))
            .select_from(
                instances.outerjoin(instance_tiers, instance_tiers.c.instance_pk == instances.c.id)
            )
            .group_by(tier)
        ).all()
    found = {name: (0, 0) for name in tiers.names}
    for name, objects, size in rows:
        found[name] = (int(objects), int(size))  # a tier no longer configured still shows
    return found


def build_report(
    usage: dict[str, tuple[int, int]],
    tiers: Tiers,
    prices: dict[str, float | None],
    *,
    growth: float = 0.0,
    months: int = 12,
) -> StorageReport:
    if months < 0:
        raise ValueError("months must be >= 0")
    rows: list[TierUsage] = []
    for name, (objects, size) in usage.items():
        target = tiers.get(name).target if name in tiers else "(not configured)"
        price = prices.get(name)
        cost = None if price is None else size / GB * price
        rows.append(TierUsage(name, target, objects, size, price, cost))
    monthly = sum(r.monthly_cost or 0.0 for r in rows)
    total_bytes = sum(r.bytes for r in rows)
    unpriced = [r.tier for r in rows if r.price_per_gb_month is None and r.bytes]
    projection = [
        (m, round(total_bytes * (1 + growth) ** m), monthly * (1 + growth) ** m)
        for m in range(months + 1)
    ]
    return StorageReport(
        tiers=rows,
        objects=sum(r.objects for r in rows),
        bytes=total_bytes,
        monthly_cost=monthly,
        unpriced_tiers=unpriced,
        growth_per_month=growth,
        months=months,
        projection=projection,
    )
