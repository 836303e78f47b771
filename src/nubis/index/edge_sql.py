"""An edge node's confirmations and evictions (docs/edge.md): the SQL of ``edge_copies``.

The ``replicate`` job records a confirmation in the commit that retires an instance's store
entry (the cloud verified those bytes by SHA-256); the ``edge-evict`` job lists the studies
whose every local instance is confirmed and whose outbox holds nothing more, and marks them
evicted in a transaction that checks it all again, so a store, delete or correction that
came in between keeps the study local.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import BigInteger, Connection, and_, case, delete, func, literal, select, update

from nubis.index.schema import edge_copies, instances, series, studies, study_overlays
from nubis.index.schema import replication_outbox as outbox

__all__ = [
    "EdgeHoldings",
    "EvictedInstance",
    "LocalStudy",
    "confirmed",
    "has_evicted",
    "holdings",
    "local_studies",
    "mark_evicted",
]


@dataclass(frozen=True)
class LocalStudy:
    """A study with instances whose blobs are still local, as the eviction rules see it."""

    partition: str
    study_uid: str
    patient_id: str | None
    updated_at: int  # ms; a newer store moves it on
    local_bytes: int
    local_instances: int
    unconfirmed: int  # local instances the cloud has not confirmed as they are now
    pending: bool  # the outbox holds entries of the study (sent, failed or parked)
    # Corrected (an overlay): the cloud serves such objects under its overlay, whose bytes
    # are not the stored ones the edge's digest names, so they are kept here.
    corrected: bool = False


@dataclass(frozen=True)
class EdgeHoldings:
    """What an edge node holds here and what it evicted (``nubis replication status``)."""

    local_instances: int
    local_bytes: int
    evicted_instances: int
    evicted_bytes: int


@dataclass(frozen=True)
class EvictedInstance:
    pk: int
    blob_key: str


def confirmed(conn: Connection, instance_pk: int, sha256: str, now: int) -> None:
    """The cloud holds instance ``instance_pk`` with digest ``sha256``, verified: record it,
    only if that is still the instance's digest (a deleted or overwritten one gets no row)."""
    conn.execute(delete(edge_copies).where(edge_copies.c.instance_pk == instance_pk))
    alive = select(instances.c.id, instances.c.sha256, literal(now, BigInteger)).where(
        instances.c.id == instance_pk, instances.c.sha256 == sha256
    )
    conn.execute(
        edge_copies.insert().from_select(["instance_pk", "confirmed_sha256", "confirmed_at"], alive)
    )


def _is_confirmed() -> object:
    return and_(
        edge_copies.c.instance_pk.is_not(None),
        edge_copies.c.confirmed_sha256 == instances.c.sha256,
    )


def local_studies(conn: Connection) -> list[LocalStudy]:
    """Every study with local instances, least recently changed first."""
    unconfirmed = func.sum(case((_is_confirmed(), 0), else_=1))  # type: ignore[arg-type]
    rows = conn.execute(
        select(
            studies.c.partition,
            studies.c.study_uid,
            studies.c.patient_id,
            studies.c.updated_at,
            func.sum(instances.c.size),
            func.count(),
            unconfirmed,
        )
        .select_from(studies)
        .join(series, series.c.study_pk == studies.c.id)
        .join(instances, instances.c.series_pk == series.c.id)
        .outerjoin(edge_copies, edge_copies.c.instance_pk == instances.c.id)
        .where(edge_copies.c.evicted_at.is_(None))
        .group_by(studies.c.id)
        .order_by(studies.c.updated_at, studies.c.id)
    ).all()
    waiting = select(outbox.c.partition, outbox.c.study_uid).distinct()
    pending = {(r[0], r[1]) for r in conn.execute(waiting)}
    overlaid = select(studies.c.partition, studies.c.study_uid).join(
        study_overlays, study_overlays.c.study_pk == studies.c.id
    )
    corrected = {(r[0], r[1]) for r in conn.execute(overlaid)}
    return [
        LocalStudy(
            r[0],
            r[1],
            r[2],
            int(r[3]),
            int(r[4] or 0),
            int(r[5]),
            int(r[6] or 0),
            (r[0], r[1]) in pending,
            (r[0], r[1]) in corrected,
        )
        for r in rows
    ]


def mark_evicted(conn: Connection, study: LocalStudy, now: int) -> list[EvictedInstance]:
    """Mark ``study``'s local instances evicted if it is still as listed: not changed since
    (``updated_at``), nothing in the outbox, not corrected, every local instance confirmed as
    it is now.
    The instances marked (their blobs are the caller's to delete after the commit); none when
    anything differs."""
    found = conn.execute(
        select(studies.c.id, studies.c.updated_at)
        .where(studies.c.partition == study.partition, studies.c.study_uid == study.study_uid)
        .with_for_update()
    ).first()
    if found is None or int(found[1]) != study.updated_at:
        return []
    waiting = conn.execute(
        select(func.count()).where(
            outbox.c.partition == study.partition, outbox.c.study_uid == study.study_uid
        )
    ).scalar_one()
    overlaid = conn.execute(
        select(study_overlays.c.study_pk).where(study_overlays.c.study_pk == found[0])
    ).first()
    if waiting or overlaid is not None:
        return []
    rows = conn.execute(
        select(
            instances.c.id, instances.c.blob_key, edge_copies.c.confirmed_sha256, instances.c.sha256
        )
        .join(series, series.c.id == instances.c.series_pk)
        .outerjoin(edge_copies, edge_copies.c.instance_pk == instances.c.id)
        .where(series.c.study_pk == found[0], edge_copies.c.evicted_at.is_(None))
    ).all()
    if len(rows) != study.local_instances or any(r[2] != r[3] for r in rows):
        return []
    pks = [int(r[0]) for r in rows]
    conn.execute(
        update(edge_copies).where(edge_copies.c.instance_pk.in_(pks)).values(evicted_at=now)
    )
    return [EvictedInstance(int(r[0]), str(r[1])) for r in rows]


def holdings(conn: Connection) -> EdgeHoldings:
    evicted = edge_copies.c.evicted_at.is_not(None)
    row = conn.execute(
        select(
            func.count(),
            func.coalesce(func.sum(instances.c.size), 0),
            func.coalesce(func.sum(case((evicted, 1), else_=0)), 0),
            func.coalesce(func.sum(case((evicted, instances.c.size), else_=0)), 0),
        )
        .select_from(instances)
        .outerjoin(edge_copies, edge_copies.c.instance_pk == instances.c.id)
    ).one()
    total, size, gone, gone_size = (int(v) for v in row)
    return EdgeHoldings(total - gone, size - gone_size, gone, gone_size)


def has_evicted(conn: Connection, study_pk: int) -> bool:
    """Whether any instance of the study was evicted (its blob is at the cloud only)."""
    found = conn.execute(
        select(edge_copies.c.instance_pk)
        .join(instances, instances.c.id == edge_copies.c.instance_pk)
        .join(series, series.c.id == instances.c.series_pk)
        .where(series.c.study_pk == study_pk, edge_copies.c.evicted_at.is_not(None))
        .limit(1)
    ).first()
    return found is not None
