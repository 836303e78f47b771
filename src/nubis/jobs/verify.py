"""The ``verify`` job: read every blob back and check it against the SHA-256 the index kept.

Reads go through the archive's blob store, so an encrypted blob is decrypted (its AES-GCM tags
checked) and the plaintext hashed: what is compared is what a client would be served. Objects
in an archive tier (S3 GLACIER, DEEP_ARCHIVE) are skipped unless ``include_archived`` is set:
reading them would request a restore of each, which costs money and hours.

Parameters (all optional): ``partition`` and ``study`` (verify one study), ``tier`` (only that
tier), ``max_mb_per_s`` (throttle, so a verification does not starve clients of I/O),
``include_archived``, ``heal`` (false: report damage without healing it).

Every problem is logged at ERROR and listed in the job's result (the first 200; all are
counted): ``missing`` (no blob), ``mismatch`` (other bytes than were stored), ``unreadable``
(fails its integrity check: tampered, truncated, moved under another object). Objects whose
patient keys were crypto-shredded are counted as ``erased``, which is what a shred is for.

Self-healing: with copy sources (the ``heal_from`` setting's backup folders), each object
missing, mismatched or unreadable is healed from the first source whose copy passes the
object's check (nubis.jobs.heal), and counted ``repaired`` or ``not_repairable``; its problem
entry says which, or why not. Each attempt is recorded at once (DICOM Instances Accessed,
action Update: success with the source it came from, or a minor failure naming why not).

Reading patient data is an access however benign: after each batch, every study read in it is
recorded (DICOM Instances Accessed, action Read, by the archive on behalf of the job's creator)
with how many objects were checked and what was wrong, a problem making the outcome a minor
failure. The record commits before the batch's progress is saved, so a run resumed after a
crash records the unsaved batch again rather than not at all.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import exists, func, select

from nubis.blobs.integrity import verify_chunks
from nubis.errors import BlobCorrupted, BlobUnreadable, KeyErased, RestoreRequired
from nubis.index.database import Index
from nubis.index.schema import (
    INSTANCES_LOCATED,
    edge_copies,
    instance_tiers,
    instances,
    series,
    studies,
)
from nubis.jobs.context import JobContext
from nubis.jobs.heal import Healer, Repair
from nubis.model.audit import ActiveParticipant, AuditEvent, EventAction, EventOutcome
from nubis.ports.blobs import BlobContext, BlobNotFound, BlobStore
from nubis.security import audit_events
from nubis.tiers.rules import Tiers

if TYPE_CHECKING:
    from collections.abc import Callable

    from nubis.services.guard import Guard

__all__ = ["verify"]

log = logging.getLogger(__name__)

_BATCH = 200
_LISTED_PROBLEMS = 200


def verify(
    ctx: JobContext,
    index: Index,
    blobs: BlobStore,
    tiers: Tiers,
    *,
    guard: Guard | None = None,
    actor: ActiveParticipant | None = None,
    healer: Callable[[], Healer | None] | None = None,
) -> dict[str, Any]:
    """``healer`` gives this run's healer (None: no copy source)."""
    params = ctx.params
    heal = healer() if healer is not None and params.get("heal", True) else None
    who = None if actor is None else replace(actor, user_name=ctx.job.created_by)
    tier = func.coalesce(instance_tiers.c.tier, tiers.default.name)
    # An edge node's evicted objects are not here to check: the cloud archive holds them,
    # verified when they were forwarded, and its own verify job checks them (docs/edge.md).
    criteria = [~exists().where(edge_copies.c.instance_pk == instances.c.id,
                                edge_copies.c.evicted_at.is_not(None))]  # fmt: skip
    if params.get("partition"):
        criteria.append(studies.c.partition == params["partition"])
    if params.get("study"):
        criteria.append(studies.c.study_uid == params["study"])
    if params.get("tier"):
        criteria.append(tier == params["tier"])
    skip = set() if params.get("include_archived") else {t.name for t in tiers.all if t.archived}
    rate = float(params.get("max_mb_per_s") or 0) * 1e6
    with index.reading() as conn:
        total = conn.execute(
            select(func.count()).select_from(INSTANCES_LOCATED).where(*criteria)
        ).scalar_one()

    saved = ctx.cursor or {}
    after = int(saved.get("after", 0))
    counts: Counter[str] = Counter(saved.get("counts", {}))
    problems: list[dict[str, str]] = list(saved.get("problems", []))
    done = int(saved.get("done", 0))
    started = time.monotonic()
    read_here = 0
    columns = (
        studies.c.partition,
        studies.c.study_uid,
        studies.c.patient_id,
        series.c.series_uid,
        instances.c.sop_instance_uid,
        instances.c.blob_key,
        instances.c.size,
        instances.c.sha256,
        tier,
    )
    for rows in index.walk_instances(columns, where=criteria, after=after, page=_BATCH):
        read: dict[tuple[str, str | None], Counter[str]] = {}
        for pk, partition, study, patient_id, series_uid, sop, key, size, sha256, where in rows:
            ctx.check()
            after = pk
            done += 1
            if where in skip:
                counts["skipped_archived"] += 1
                continue
            context = BlobContext(partition, study, series_uid, sop, sha256)
            problem = _check(blobs, key, size, sha256, context, counts)
            read_here += size
            read.setdefault((study, patient_id), Counter())[problem or "checked"] += 1
            if problem is not None:
                counts[problem] += 1
                log.error(
                    "verify: instance %s of study %s (partition %s, blob %s): %s",
                    sop, study, partition, key, problem,
                )  # fmt: skip
                entry = {"partition": partition, "study": study, "instance": sop, "blob": key,
                         "problem": problem}  # fmt: skip
                if heal is not None:
                    repair = heal.heal(key, size, sha256, replace(context, patient_id=patient_id))
                    counts["repaired" if repair.repaired else "not_repairable"] += 1
                    entry["repair"] = repair.describe()
                    (log.warning if repair.repaired else log.error)(
                        "verify: instance %s (blob %s) %s", sop, key, entry["repair"]
                    )
                    if guard is not None and who is not None:
                        guard.record(_repair_event(who, study, patient_id, sop, key, repair))
                if len(problems) < _LISTED_PROBLEMS:
                    problems.append(entry)
            if rate:
                # Sleep off any lead over the allowed rate.
                ahead = read_here / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
            ctx.progress(done, total)
        if guard is not None and who is not None:
            guard.record(*_read_events(who, read))
        cursor = {"after": after, "done": done, "counts": dict(counts), "problems": problems}
        ctx.progress(done, total, cursor)
    elapsed = time.monotonic() - started
    return {
        "checked": counts["ok"] + sum(counts[p] for p in ("missing", "mismatch", "unreadable")),
        **dict(sorted(counts.items())),
        "mb_per_s": round(read_here / 1e6 / elapsed, 1) if elapsed > 0 else None,
        "problems": problems,
    }


def _read_events(
    who: ActiveParticipant, read: dict[tuple[str, str | None], Counter[str]]
) -> list[AuditEvent]:
    """One record per study read in a batch: how many objects, and what was wrong."""
    events = []
    for (study, patient_id), found in read.items():
        total = sum(found.values())
        wrong = ", ".join(f"{n} {p}" for p, n in sorted(found.items()) if p != "checked")
        events.append(
            audit_events.instances_accessed(
                who,
                patient_id=patient_id,
                study_uids=[study],
                outcome=EventOutcome.MINOR_FAILURE if wrong else EventOutcome.SUCCESS,
                front_door="system",
                description=f"integrity check of {total} object(s)"
                + (f": {wrong}" if wrong else ": intact"),
            )
        )
    return events


def _repair_event(
    who: ActiveParticipant,
    study: str,
    patient_id: str | None,
    sop: str,
    key: str,
    repair: Repair,
) -> AuditEvent:
    """The stored copy of an instance rewritten from a copy source, or why it could not be."""
    return audit_events.instances_accessed(
        who,
        patient_id=patient_id,
        study_uids=[study],
        action=EventAction.UPDATE,
        outcome=EventOutcome.SUCCESS if repair.repaired else EventOutcome.MINOR_FAILURE,
        front_door="system",
        description=f"self-healing of instance {sop} (blob {key}): {repair.describe()}",
    )


def _check(
    blobs: BlobStore, key: str, size: int, sha256: str, context: BlobContext, counts: Counter[str]
) -> str | None:
    """None when the blob is intact; else what is wrong with it."""
    try:
        verify_chunks(blobs.iter_chunks(key, context=context), size, sha256)
    except BlobNotFound:
        return "missing"
    except KeyErased:
        counts["erased"] += 1
        return None
    except RestoreRequired:
        counts["skipped_archived"] += 1
        return None
    except BlobUnreadable:
        return "unreadable"
    except BlobCorrupted:
        return "mismatch"
    counts["ok"] += 1
    counts["bytes"] += size
    return None
