"""The ``edge-evict`` job: free an edge node's disk of studies the cloud archive confirmed.

A study is evicted when a keep rule lets it go (older than ``edge_keep_days`` since its last
change, or the local copies above ``edge_keep_bytes``, least recently changed first) AND the
cloud confirmed it: every local instance has a confirmation recorded with the digest it has
now (the ``replicate`` job records one when the cloud verified the instance's bytes), and the
outbox holds no entry of the study, sent or failed or parked. A corrected study stays too:
the cloud serves its objects under the correction's overlay, which are not the bytes the
edge's digest names, so a read-through could not check them. A study that fails any of
these stays, whatever the rules say; a store, delete or correction that lands between the listing
and the eviction keeps it too (nubis.index.edge_sql.mark_evicted checks it all again in the
transaction that marks it).

The mark and the audit record (DICOM Instances Accessed, action Update, per study) commit
together; the blobs are deleted after the commit. A crash between the two leaves blobs that
are marked evicted but still here: reads find them here, the space comes back with the
next eviction of a study, or a delete. Nothing unconfirmed is ever deleted.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from nubis.index import edge_sql
from nubis.index.database import Index
from nubis.index.edge_sql import EvictedInstance, LocalStudy
from nubis.jobs.context import JobContext
from nubis.jobs.schedule import EDGE_EVICT
from nubis.jobs.store import now_ms
from nubis.model.audit import ActiveParticipant, EventAction
from nubis.ports.blobs import BlobStore
from nubis.security import audit_events
from nubis.services.guard import Guard

__all__ = ["KIND", "Evictor"]

log = logging.getLogger(__name__)

KIND = EDGE_EVICT
_DAY_MS = 86400 * 1000


class Evictor:
    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        guard: Guard,
        actor: ActiveParticipant,
        *,
        cloud: str,
        keep_days: int,
        keep_bytes: int,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.guard = guard
        self.actor = actor
        self.cloud = cloud
        self.keep_days = keep_days
        self.keep_bytes = keep_bytes

    def run(self, ctx: JobContext) -> dict[str, Any]:
        now = now_ms()
        with self.index.reading() as conn:
            local = edge_sql.local_studies(conn)
        total = sum(s.local_bytes for s in local)
        too_old = now - self.keep_days * _DAY_MS
        counts: Counter[str] = Counter()
        who = replace(self.actor, user_name=ctx.job.created_by)
        for study in local:  # least recently changed first
            ctx.check()
            old = self.keep_days > 0 and study.updated_at < too_old
            over = self.keep_bytes > 0 and total > self.keep_bytes
            if not (old or over):
                break  # the rest changed more recently, and the local copies fit
            if study.pending or study.unconfirmed:
                counts["kept_unconfirmed"] += 1
                continue
            if study.corrected:
                counts["kept_corrected"] += 1
                continue
            evicted = self._evict(study, who, now)
            if not evicted:
                counts["kept_changed"] += 1
                continue
            counts["studies_evicted"] += 1
            counts["instances_evicted"] += len(evicted)
            counts["bytes_freed"] += study.local_bytes
            total -= study.local_bytes
            ctx.progress(counts["studies_evicted"])
        counts["local_bytes"] = total
        return dict(counts)

    def _evict(self, study: LocalStudy, who: ActiveParticipant, now: int) -> list[EvictedInstance]:
        event = audit_events.instances_accessed(
            who,
            patient_id=study.patient_id,
            study_uids=[study.study_uid],
            action=EventAction.UPDATE,
            front_door="system",
            description=(
                f"{study.local_instances} object(s) evicted from this edge node: the cloud "
                f"archive {self.cloud} holds them, verified by SHA-256, and reads fetch them "
                "from there"
            ),
        )
        record = self.guard.record_job(event)

        def mark(conn: Connection) -> list[EvictedInstance]:
            marked = edge_sql.mark_evicted(conn, study, now)
            if marked and record is not None:
                record(conn)
            return marked

        evicted = self.index.write(mark)
        for inst in evicted:
            self.blobs.delete(inst.blob_key)
        if evicted:
            log.info(
                "edge: study %s evicted (%d objects, %d bytes)",
                study.study_uid, len(evicted), study.local_bytes,
            )  # fmt: skip
        return evicted
