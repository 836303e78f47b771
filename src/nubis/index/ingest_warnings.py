"""``nubis storage warnings``: the objects ingested with warnings, per reason (issue 12).

Read from ``instance_warnings`` (written at ingest only when an object had something odd
about it) joined to the instances, series and studies it names: counts per reason, and with
``--list`` the UIDs and what was odd. UIDs and attribute names only: a warning's detail never
carries another value of the data set (nubis.model.records.IngestWarning).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select

from nubis.index.database import Index
from nubis.index.schema import instance_warnings, instances, series, studies

__all__ = ["ReasonCount", "WarnedInstance", "warned_instances", "warning_counts"]


@dataclass(frozen=True)
class ReasonCount:
    reason: str
    status: int
    instances: int
    studies: int


@dataclass(frozen=True)
class WarnedInstance:
    reason: str
    status: int
    partition: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    detail: str
    at: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


_FROM = (
    instance_warnings.join(instances, instances.c.id == instance_warnings.c.instance_pk)
    .join(series, series.c.id == instances.c.series_pk)
    .join(studies, studies.c.id == series.c.study_pk)
)


def warning_counts(index: Index) -> list[ReasonCount]:
    """Per reason (and status): how many instances, in how many studies; most first."""
    w = instance_warnings.c
    stmt = (
        select(
            w.reason,
            w.status,
            func.count(w.instance_pk),
            func.count(func.distinct(series.c.study_pk)),
        )
        .select_from(_FROM)
        .group_by(w.reason, w.status)
        .order_by(func.count(w.instance_pk).desc(), w.reason)
    )
    with index.reading() as conn:
        return [ReasonCount(r[0], int(r[1]), int(r[2]), int(r[3])) for r in conn.execute(stmt)]


def warned_instances(
    index: Index, *, reason: str | None = None, limit: int = 10_000
) -> list[WarnedInstance]:
    """The instances with warnings (of ``reason`` only, when given), oldest warning first."""
    w = instance_warnings.c
    stmt = (
        select(
            w.reason,
            w.status,
            studies.c.partition,
            studies.c.study_uid,
            series.c.series_uid,
            instances.c.sop_instance_uid,
            w.detail,
            w.at,
        )
        .select_from(_FROM)
        .order_by(w.at, w.instance_pk, w.reason)
        .limit(limit)
    )
    if reason is not None:
        stmt = stmt.where(w.reason == reason)
    with index.reading() as conn:
        return [WarnedInstance(*row) for row in conn.execute(stmt)]
