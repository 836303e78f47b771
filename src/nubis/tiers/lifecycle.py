"""The lifecycle pass (the ``tier`` job) and pins.

The pass walks studies in primary-key order, a batch at a time, decides the tier each belongs
in (nubis.tiers.rules.target_tier: pin, rules, first tier) and moves the blobs of its instances
that are elsewhere, recording each move in ``instance_tiers``. Its cursor is the last study of
the last finished batch, so a run taken over by another node resumes there. Moves are
idempotent: a blob already where it should be costs a copy (S3) or nothing (folders), so a run
cut short between a move and its record only redoes that move.

Reads are never affected: a blob is readable in every tier (archive classes after a restore),
and the index row that names the blob does not change, except in a tier that keeps its objects
compressed (``tier_compression``): there an object with uncompressed pixel data, arriving or
already there, is re-encoded losslessly and replaced (nubis.tiers.compression), which records
its own move with it.

Each study whose objects moved is recorded (DICOM Instances Accessed, action Update, naming the
patient, the study, how many objects and the tier) in the same commit as the moves' rows: a
move the index knows of is a move the audit trail knows of.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import Connection, and_, func, or_, select

from nubis.dicom.recompress import RECOMPRESSIBLE
from nubis.errors import RestoreRequired
from nubis.index import feed_sql, outbox_sql
from nubis.index.database import Index
from nubis.index.driver import driver_cursor
from nubis.index.schema import (
    INSTANCES_LOCATED,
    instance_originals,
    instance_tiers,
    instances,
    series,
    studies,
    study_lifecycle,
)
from nubis.index.upsert import upsert
from nubis.model.audit import ActiveParticipant, AuditEvent, EventAction
from nubis.ports.blobs import BlobContext, BlobNotFound
from nubis.security import audit_events
from nubis.tiers.compression import (
    LARGEST_OBJECT,
    Candidate,
    Outcome,
    TierCompressor,
)
from nubis.tiers.movers import TierMover
from nubis.tiers.rules import Rule, StudyFacts, Tiers, target_tier

if TYPE_CHECKING:
    from nubis.jobs.context import JobContext
    from nubis.services.guard import Guard

__all__ = ["Lifecycle", "study_pk", "upsert"]

log = logging.getLogger(__name__)

_BATCH = 100
_RECORD_EVERY = 100


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Lifecycle:
    """Applies the tier rules to the index and the blob store.

    ``guard`` records the moves, as ``actor`` (the archive; a job's creator is added as its
    user name); without one (``nubis storage report``, which moves nothing) nothing is recorded.
    ``compressor`` re-encodes objects for the tiers that keep theirs compressed.
    """

    def __init__(
        self,
        index: Index,
        tiers: Tiers,
        rules: Sequence[Rule],
        mover: TierMover | None,
        *,
        guard: Guard | None = None,
        actor: ActiveParticipant | None = None,
        compressor: TierCompressor | None = None,
    ) -> None:
        self.index = index
        self.tiers = tiers
        self.rules = tuple(rules)
        self.mover = mover
        self.guard = guard
        self.actor = actor
        self.compressor = compressor

    # ------------------------------------------------------------------ the pass
    def run(
        self,
        ctx: JobContext | None = None,
        *,
        partition: str | None = None,
        study_uid: str | None = None,
        now: int | None = None,
    ) -> dict[str, Any]:
        """Move every blob that is not in its study's tier; a summary of what happened."""
        moment = _now_ms() if now is None else now
        who = self.actor
        if who is not None and ctx is not None:
            who = replace(who, user_name=ctx.job.created_by)
        criteria = []
        if partition is not None:
            criteria.append(studies.c.partition == partition)
        if study_uid is not None:
            criteria.append(studies.c.study_uid == study_uid)
        with self.index.reading() as conn:
            total = conn.execute(
                select(func.count()).select_from(studies).where(*criteria)
            ).scalar_one()
        after = int(ctx.cursor["after"]) if ctx and ctx.cursor else 0
        counts: Counter[str] = Counter(ctx.cursor.get("counts", {}) if ctx and ctx.cursor else {})
        done = ctx.done if ctx else 0
        columns = (
            studies.c.partition,
            studies.c.modalities,
            studies.c.created_at,
            study_lifecycle.c.last_read_at,
            study_lifecycle.c.tier_pin,
            study_lifecycle.c.tier_pin_until,
        )
        located = studies.outerjoin(study_lifecycle, study_lifecycle.c.study_pk == studies.c.id)
        for rows in self.index.walk(
            studies.c.id, columns, select_from=located, where=criteria, after=after, page=_BATCH
        ):
            wanted: dict[str, list[int]] = defaultdict(list)
            for pk, part, modalities, created, last_read, pin, pin_until in rows:
                facts = StudyFacts(
                    part,
                    frozenset(filter(None, (modalities or "").split("\\"))),
                    created,
                    last_read,
                    pin,
                    pin_until,
                )
                wanted[target_tier(facts, self.rules, self.tiers, moment)].append(pk)
            for tier, pks in wanted.items():
                self._move_studies(tier, pks, counts, ctx, who)
            after = rows[-1][0]
            done += len(rows)
            if ctx is not None:
                ctx.progress(done, total, {"after": after, "counts": dict(counts)})
        summary: dict[str, Any] = {"studies": done, **dict(sorted(counts.items()))}
        return summary

    def _move_studies(
        self,
        tier: str,
        study_pks: list[int],
        counts: Counter[str],
        ctx: JobContext | None,
        who: ActiveParticipant | None,
    ) -> None:
        default = self.tiers.default.name
        current = func.coalesce(instance_tiers.c.tier, default)
        elsewhere = current != tier
        compressing = self.compressor is not None and tier in self.compressor.policy
        if compressing:
            # Objects already in the tier are re-encoded too (the policy may be newer than
            # they are), each tried once: instance_originals remembers it.
            elsewhere = or_(
                elsewhere,
                and_(
                    instances.c.transfer_syntax_uid.in_(sorted(RECOMPRESSIBLE)),
                    instances.c.rows.is_not(None),
                    instances.c.size <= LARGEST_OBJECT,
                    instance_originals.c.instance_pk.is_(None),
                ),
            )
        with self.index.reading() as conn:
            pending = conn.execute(
                select(
                    instances.c.id,
                    instances.c.blob_key,
                    instances.c.size,
                    current,
                    studies.c.study_uid,
                    studies.c.patient_id,
                    instances.c.sha256,
                    instances.c.transfer_syntax_uid,
                    instances.c.partition,
                    series.c.series_uid,
                    instances.c.sop_instance_uid,
                    instance_originals.c.instance_pk.is_not(None),
                )
                .select_from(
                    INSTANCES_LOCATED.outerjoin(
                        instance_originals, instance_originals.c.instance_pk == instances.c.id
                    )
                )
                .where(series.c.study_pk.in_(study_pks), elsewhere)
                .order_by(instances.c.id)
            ).all()
        if not pending:
            return
        if self.mover is None and any(row[3] != tier for row in pending):
            raise RuntimeError(
                f"{len(pending)} object(s) belong in tier {tier!r}, but this blob store has no "
                "tiers (S3 storage classes or tier folders)"
            )
        target = self.tiers.get(tier)
        moved: list[_Moved] = []
        for pk, key, size, source, study_uid, patient_id, sha256, syntax, *rest in pending:
            partition, series_uid, sop_uid, tried = rest
            if ctx is not None:
                ctx.check()
            if compressing and self.compressor is not None:
                obj = Candidate(
                    pk, key, size, sha256, syntax, source,
                    BlobContext(partition, study_uid, series_uid, sop_uid, sha256), patient_id,
                )  # fmt: skip
                if self.compressor.wants(obj, tier, tried) and self._compress(
                    obj, tier, counts, ctx, who
                ):
                    continue
            if source == tier:
                continue  # tried, kept as it is: already where it belongs
            assert self.mover is not None
            try:
                self.mover.move(key, target)
            except BlobNotFound:
                # Deleted since the query (the reaper took it), or lost: verify reports losses.
                counts["missing"] += 1
                continue
            except RestoreRequired:
                if self.mover.restore(key):
                    counts["restores_requested"] += 1
                counts["waiting_for_restore"] += 1
                continue
            moved.append(_Moved(pk, key, study_uid, patient_id, partition))
            counts[f"moved_to_{tier}"] += 1
            counts["bytes_moved"] += size
            log.debug("blob %s moved from %s to %s", key, source, tier)
            if len(moved) >= _RECORD_EVERY:
                self._record(moved, tier, who)
                moved = []
        if moved:
            self._record(moved, tier, who)

    def _compress(
        self,
        obj: Candidate,
        tier: str,
        counts: Counter[str],
        ctx: JobContext | None,
        who: ActiveParticipant | None,
    ) -> bool:
        """Re-encode ``obj`` for ``tier`` (which moves it there too); False when it is to be
        moved as it is instead."""
        assert self.compressor is not None
        result = self.compressor.compress(obj, tier, who, ctx.job.id if ctx else None)
        outcome = result.outcome
        if outcome is Outcome.COMPRESSED:
            counts[f"compressed_in_{tier}"] += 1
            counts["compressed_bytes_before"] += obj.size
            counts["compressed_bytes_after"] += result.size
            if obj.tier != tier:
                counts[f"moved_to_{tier}"] += 1
                counts["bytes_moved"] += result.size
            return True
        counts[str(outcome)] += 1
        if outcome is Outcome.WAITING:
            if self.mover is not None and self.mover.restore(obj.blob_key):
                counts["restores_requested"] += 1
            return True
        # Kept or unreadable: it moves as it is. Missing, changed, abandoned: a later run.
        return outcome not in (Outcome.KEPT, Outcome.UNREADABLE)

    def _record(self, moved: list[_Moved], tier: str, who: ActiveParticipant | None) -> None:
        now = _now_ms()
        audit = None
        if self.guard is not None and who is not None:
            audit = self.guard.record_job(*_move_events(who, moved, tier))

        def job(conn: Connection) -> None:
            for pk, key, *_ in moved:
                # Locked (PostgreSQL) so a delete of the instance waits for this commit and
                # then takes our row with it, instead of failing our foreign key.
                alive = conn.execute(
                    select(instances.c.id)
                    .where(instances.c.id == pk, instances.c.blob_key == key)
                    .with_for_update()
                ).first()
                if alive:
                    upsert(
                        conn,
                        instance_tiers,
                        "instance_pk",
                        {"instance_pk": pk, "tier": tier, "moved_at": now},
                    )
            _queue_replication(conn, self.index.replicated_partition, moved, tier, now)
            if audit is not None:
                audit(conn)
            self.index.note_changes(conn, *_feed_changes(moved, tier))

        self.index.write(job)

    # ------------------------------------------------------------------ pins and facts
    def pin(
        self, partition: str, study_uid: str, tier: str | None, until: int | None = None
    ) -> bool:
        """Keep a study in ``tier`` whatever the rules say (until ``until``, ms since the
        epoch); ``tier=None`` removes the pin. False when there is no such study."""
        if tier is not None:
            self.tiers.get(tier)  # KeyError names the tiers there are

        def job(conn: Connection) -> bool:
            pk = study_pk(conn, partition, study_uid)
            if pk is None:
                return False
            upsert(
                conn,
                study_lifecycle,
                "study_pk",
                {"study_pk": pk, "tier_pin": tier, "tier_pin_until": until if tier else None},
            )
            return True

        return self.index.write(job)

    def study_tiers(self, partition: str, study_uid: str) -> dict[str, Any] | None:
        """Where a study's objects are and what decides it: None when there is no study."""
        default = self.tiers.default.name
        with self.index.reading() as conn:
            row = conn.execute(
                select(
                    studies.c.id,
                    studies.c.created_at,
                    study_lifecycle.c.last_read_at,
                    study_lifecycle.c.tier_pin,
                    study_lifecycle.c.tier_pin_until,
                )
                .select_from(
                    studies.outerjoin(study_lifecycle, study_lifecycle.c.study_pk == studies.c.id)
                )
                .where(studies.c.partition == partition, studies.c.study_uid == study_uid)
            ).first()
            if row is None:
                return None
            tier = func.coalesce(instance_tiers.c.tier, default)
            where = conn.execute(
                select(tier, func.count(), func.coalesce(func.sum(instances.c.size), 0))
                .select_from(
                    instances.join(series, instances.c.series_pk == series.c.id).outerjoin(
                        instance_tiers, instance_tiers.c.instance_pk == instances.c.id
                    )
                )
                .where(series.c.study_pk == row[0])
                .group_by(tier)
            ).all()
        return {
            "created_at": row[1],
            "last_read_at": row[2],
            "pin": row[3],
            "pin_until": row[4],
            "tiers": {name: {"objects": n, "bytes": int(b)} for name, n, b in where},
        }


class _Moved(NamedTuple):
    pk: int
    blob_key: str
    study_uid: str
    patient_id: str | None
    partition: str


def _queue_replication(
    conn: Connection, replicated: str | None, moved: list[_Moved], tier: str, now: int
) -> None:
    """One outbox entry per study of the replicated tenant, in the move's commit. The replica
    only records it (its tiers follow its own rules and stores), so the entry keeps the
    study's order and shows in the backlog, and nothing more."""
    if replicated is None:
        return
    studies = sorted({m.study_uid for m in moved if m.partition == replicated})
    cursor = driver_cursor(conn)
    detail = json.dumps({"tier": tier})
    for study_uid in studies:
        outbox_sql.add(
            cursor, outbox_sql.TIER, replicated, study_uid, None, None, now=now, detail=detail
        )


def _feed_changes(moved: list[_Moved], tier: str) -> list[feed_sql.Change]:
    """The change feed's entries of a batch of moves: one update per study."""
    studies = dict.fromkeys((m.partition, m.study_uid) for m in moved)
    return [
        feed_sql.Change(feed_sql.UPDATE, feed_sql.CURRENT, p, uid, detail=f"tier:{tier}")
        for p, uid in studies
    ]


def _move_events(who: ActiveParticipant, moved: list[_Moved], tier: str) -> list[AuditEvent]:
    """One record per study: its objects in this batch went to ``tier``."""
    per_study = Counter((m.study_uid, m.patient_id) for m in moved)
    return [
        audit_events.instances_accessed(
            who,
            patient_id=patient_id,
            study_uids=[study_uid],
            action=EventAction.UPDATE,
            front_door="system",
            description=f"{count} object(s) moved to storage tier {tier}",
        )
        for (study_uid, patient_id), count in per_study.items()
    ]


def study_pk(conn: Connection, partition: str, study_uid: str) -> int | None:
    """The study's primary key, locked (PostgreSQL: FOR KEY SHARE) until commit, so a delete
    of the study waits and then cascades to the row we write instead of breaking its key."""
    found = conn.execute(
        select(studies.c.id)
        .where(studies.c.partition == partition, studies.c.study_uid == study_uid)
        .with_for_update(key_share=True)
    ).first()
    return None if found is None else int(found[0])
