"""``nubis storage report``: objects, bytes and monthly cost per tier, and a projection.

Counts come from the index (one grouped query), not from listing the store: the index knows
each object's tier and size, and listing millions of S3 objects would cost requests and
minutes. Sizes are the objects' own; encrypted blobs take 1 KiB plus 16 bytes per 64 KiB more
(0.03 % of a large object). A GB is 2^30 bytes, as AWS bills it.

The projection grows every tier by the same monthly rate, compounded: it assumes the mix of
tiers stays as it is (which the lifecycle rules roughly keep once they have run for a while).

In tiers that keep their objects losslessly compressed (``tier_compression``), the saving is
counted from the index as well: for each tier, what its objects took as they arrived (the size
``instance_originals`` recorded for a compressed one) against what they take now, the ratio of
the two, and what the difference costs per month at the tier's price.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select

from nubis.index.database import Index
from nubis.index.schema import instance_originals, instance_tiers, instances
from nubis.tiers.rules import Tiers

__all__ = [
    "StorageReport",
    "TierSaving",
    "TierUsage",
    "build_report",
    "compression_by_tier",
    "parse_growth",
    "usage_by_tier",
]

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
class TierSaving:
    """What lossless compression saves in one tier: all its objects, as they arrived
    (``bytes_before``) and as stored now (``bytes_after``), of which ``compressed`` objects
    were re-encoded, from ``compressed_before`` bytes to ``compressed_after``."""

    tier: str
    objects: int
    compressed: int
    bytes_before: int
    bytes_after: int
    compressed_before: int
    compressed_after: int
    monthly_saving: float | None

    @property
    def saved(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def ratio(self) -> float | None:
        """bytes before / bytes after: 2.0 means the tier holds half of what arrived."""
        return self.bytes_before / self.bytes_after if self.bytes_after else None

    @property
    def compressed_ratio(self) -> float | None:
        """The same for the re-encoded objects alone: the codec's ratio on them."""
        return self.compressed_before / self.compressed_after if self.compressed_after else None


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
    # Per tier with compressed objects; empty when none is.
    compression: list[TierSaving] = field(default_factory=list)

    @property
    def monthly_saving(self) -> float:
        return sum(s.monthly_saving or 0.0 for s in self.compression)

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
        data["compression"] = [
            {
                **asdict(saving),
                "saved": saving.saved,
                "ratio": _rounded(saving.ratio),
                "compressed_ratio": _rounded(saving.compressed_ratio),
                "monthly_saving": _rounded(saving.monthly_saving),
            }
            for saving in self.compression
        ]
        data["monthly_saving"] = round(self.monthly_saving, 4)
        return data


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


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


def compression_by_tier(index: Index, tiers: Tiers) -> dict[str, tuple[int, int, int]]:
    """tier name -> (objects compressed, their bytes as they arrived, their bytes now), for
    the tiers holding compressed objects (nubis.tiers.compression)."""
    tier = func.coalesce(instance_tiers.c.tier, tiers.default.name)
    with index.reading() as conn:
        rows = conn.execute(
            select(
                tier,
                func.count(),
                func.coalesce(func.sum(instance_originals.c.size), 0),
                func.coalesce(func.sum(instances.c.size), 0),
            )
            .select_from(
                instance_originals.join(
                    instances, instances.c.id == instance_originals.c.instance_pk
                ).outerjoin(instance_tiers, instance_tiers.c.instance_pk == instances.c.id)
            )
            .where(instance_originals.c.compressed.is_(True))
            .group_by(tier)
        ).all()
    return {name: (int(n), int(before), int(after)) for name, n, before, after in rows}


def build_report(
    usage: dict[str, tuple[int, int]],
    tiers: Tiers,
    prices: dict[str, float | None],
    *,
    growth: float = 0.0,
    months: int = 12,
    compressed: dict[str, tuple[int, int, int]] | None = None,
) -> StorageReport:
    """The report of ``usage`` (:func:`usage_by_tier`); with ``compressed``
    (:func:`compression_by_tier`), what compression saves in each tier."""
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
    savings = []
    for name, (count, before, after) in sorted((compressed or {}).items()):
        objects, size = usage.get(name, (0, 0))
        price = prices.get(name)
        # Objects not re-encoded count alike before and after.
        total_before = size - after + before
        savings.append(
            TierSaving(
                name, objects, count, total_before, size, before, after,
                None if price is None else (total_before - size) / GB * price,
            )
        )  # fmt: skip
    return StorageReport(
        compression=savings,
        tiers=rows,
        objects=sum(r.objects for r in rows),
        bytes=total_bytes,
        monthly_cost=monthly,
        unpriced_tiers=unpriced,
        growth_per_month=growth,
        months=months,
        projection=projection,
    )
