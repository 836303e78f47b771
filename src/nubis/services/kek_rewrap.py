"""Re-wrap: make every stored object that names an old KEK name the current one (``rewrap`` job).

A blob's header names the KEK that wraps its data key (DEK). Blob stores are write-once, so an
object is re-wrapped by writing a NEW blob with the same plaintext and swapping the blob key in
its index row. Per object whose header names the KEK (``kek_id``):

1. decrypt the old blob as a read does (every AES-GCM tag checked) into a *sealed* spool file:
   the plaintext is re-encrypted as it streams, under a fresh DEK held only in memory
   (nubis.services.spool), and its SHA-256 and size must equal the index's;
2. store that file under a new blob key as a store does (the header wraps the fresh DEK under
   the current KEK and the same patient key, checked by reading the new header back); move the
   new blob into the tier the index records for the object;
3. swap in one index transaction: the row takes the new key only if it still names the old key
   and the same tier (a concurrent delete, overwrite or tier move wins, and the new blob is
   deleted), the old key is queued in ``doomed_blobs``, and the audit record (Security Alert,
   Object Security Attributes Changed) is appended: all three commit or none does;
4. delete the old blob (the reaper deletes it instead if this process dies first).

Why a fresh DEK rather than the same ciphertext under a new header: a KEK is retired because it
may be compromised, and whoever holds it and a copy of an old header (a backup, a snapshot, the
old blob before the reaper got to it) can unwrap that DEK; segments kept under it would stay
readable to them whatever the new header says. The segments' own associated data binds neither
the header nor the KEK id (nubis.crypto.envelope), so reuse was possible, but it would save
only AES-GCM over the bytes, which a read does anyway, and it needs its own code path where a
fresh DEK uses the store's.

Crash safety: before the swap commits the row names the old blob, which is untouched and
readable; the new blob (if written) is referenced by nothing, so the reaper removes it as an
orphan once it is older than ``orphan_grace_seconds``. After the commit the row names the new
blob and the old key is in ``doomed_blobs``, which the reaper deletes. A swap is never
attempted more than half the grace period after its new blob was stored, so the reaper cannot
take a new blob for an orphan just before the row starts to name it. A failed swap leaves its
new blob to the reaper rather than deleting it: a commit whose answer was lost would otherwise
leave the row naming a deleted blob. A spool file left by a crash is ciphertext under a key
that died with the process and is cleared at the next start.

The job works from the index, in instance id order, and saves its cursor after each page: a run
taken over after its node died starts at the last saved page and finds the objects it already
did naming the current KEK. Objects in an archive tier that are not restored cannot be read
(the read asks for a restore, as every read does): they are counted as ``awaiting_restore``,
and a later run does them. Objects whose patient key was shredded can never be read again;
they are counted as ``erased`` and keep naming the KEK until they are deleted.

Parameters: ``kek_id`` (required), ``workers`` (objects re-wrapped at once, default 4).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.errors import BlobUnreadable, KeyErased, NubisError, RestoreRequired
from nubis.index.database import Index
from nubis.index.schema import (
    doomed_blobs,
    instance_tiers,
    instances,
    series,
    studies,
)
from nubis.jobs.context import JobContext, JobFailed
from nubis.model.audit import ActiveParticipant, AuditEvent, EventOutcome, EventType
from nubis.ports.blobs import BlobContext, BlobNotFound
from nubis.ports.keys import WrappedKey
from nubis.security import audit_events
from nubis.services.guard import Guard
from nubis.services.spool import Spool
from nubis.tiers.movers import TierMover
from nubis.tiers.rules import Tiers

__all__ = ["KekRewrap"]

log = logging.getLogger(__name__)

_PAGE = 200
_LISTED_PROBLEMS = 200
# Outcomes that leave an object naming the KEK, listed in the result for the operator.
_PROBLEMS = ("abandoned", "awaiting_restore", "erased", "key_mismatch", "missing", "unreadable")


@dataclass(frozen=True)
class _Object:
    """One indexed object as the pass found it."""

    pk: int
    key: str
    size: int
    tier: str
    context: BlobContext  # without patient_id: a read does not need it


@dataclass(frozen=True)
class _Copy:
    """The new blob of an object, not yet named by its row."""

    key: str
    stored_at: float  # wall clock before the put, as the reaper's listing times are
    kek_id: str  # the KEK its header names
    patient_id: str


class KekRewrap:
    """The ``rewrap`` job: see the module docstring.

    Parameters
    ----------
    spool : Spool
        A sealed spool beside the blobs, where each object is re-encrypted on its way.
    actor : ActiveParticipant
        The archive as the audit records' participant; the job's creator is added as its name.
    orphan_grace_seconds : int
        The reaper's; a swap is abandoned when its new blob is older than half of it.
    """

    def __init__(
        self,
        index: Index,
        blobs: EncryptedBlobStore,
        spool: Spool,
        *,
        guard: Guard,
        tiers: Tiers,
        mover: TierMover | None,
        actor: ActiveParticipant,
        orphan_grace_seconds: int,
    ) -> None:
        if not spool.sealed:
            raise ValueError("re-wrapping needs a sealed spool: plaintext never reaches disk")
        self.index = index
        self.blobs = blobs
        self.spool = spool
        self.guard = guard
        self.tiers = tiers
        self.mover = mover
        self.actor = actor
        self.orphan_grace_seconds = orphan_grace_seconds

    # ------------------------------------------------------------------ the job
    def run(self, ctx: JobContext) -> dict[str, Any]:
        kek_id = str(ctx.params.get("kek_id") or "")
        keys = self.blobs.keys
        if kek_id not in keys.key_ids() or kek_id == keys.current_key_id:
            # No later attempt can do better: fail the job now rather than after the retries.
            raise JobFailed(
                f"rewrap: kek_id {kek_id!r} is not an older key-encryption key "
                f"(KEKs: {', '.join(keys.key_ids())}; the last is current)",
                retry_in=None,
            )
        who = replace(self.actor, user_name=ctx.job.created_by)
        what = f"re-wrap stored objects named by key-encryption key {kek_id} (job {ctx.job.id})"
        saved = ctx.cursor or {}
        resumed = f", resumed after {saved['done']} object(s)" if saved else ""
        self._record(who, EventOutcome.SUCCESS, f"{what}: begins{resumed}")
        rewrapped_before = int(saved.get("counts", {}).get("rewrapped", 0))
        started = time.monotonic()
        try:
            counts, problems = self._pass(ctx, kek_id, who)
        except BaseException as exc:
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            self._record_quietly(
                who, EventOutcome.SERIOUS_FAILURE, f"{what}: stopped after {ctx.done}: {reason}"
            )
            raise
        rate = (counts["rewrapped"] - rewrapped_before) / (time.monotonic() - started)
        left = sum(counts[p] for p in _PROBLEMS)
        summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()) if name != "bytes")
        self._record(
            who,
            EventOutcome.MINOR_FAILURE if left else EventOutcome.SUCCESS,
            f"{what}: done ({summary or 'nothing indexed'})",
        )
        return {
            "kek_id": kek_id,
            "checked": ctx.done,
            **dict(sorted(counts.items())),
            "objects_per_s": round(rate, 1),  # of this run, not of the runs it resumed
            "problems": problems,
        }

    def _pass(
        self, ctx: JobContext, kek_id: str, who: ActiveParticipant
    ) -> tuple[Counter[str], list[dict[str, str]]]:
        saved = ctx.cursor or {}
        after = int(saved.get("after", 0))
        # From the cursor, not ctx.done: progress saved in the middle of a page counts
        # objects that a resumed run does again.
        done = int(saved.get("done", 0))
        counts: Counter[str] = Counter(saved.get("counts", {}))
        problems: list[dict[str, str]] = list(saved.get("problems", []))
        with self.index.reading() as conn:
            total = conn.execute(select(func.count()).select_from(instances)).scalar_one()
        workers = max(1, int(ctx.params.get("workers") or 4))
        with ThreadPoolExecutor(workers, thread_name_prefix="nubis-rewrap") as pool:
            for page in self._pages(after):
                deleted: list[str] = []

                def one(obj: _Object, deleted: list[str] = deleted) -> str:
                    ctx.check()
                    return self._rewrap(obj, kek_id, who, ctx.job.id, deleted)

                for obj, outcome in zip(page, pool.map(one, page), strict=True):
                    done += 1
                    counts[outcome] += 1
                    if outcome == "rewrapped":
                        counts["bytes"] += obj.size
                    if outcome in _PROBLEMS and len(problems) < _LISTED_PROBLEMS:
                        c = obj.context
                        problems.append(
                            {"partition": c.partition, "study": c.study_uid,
                             "instance": c.sop_instance_uid, "problem": outcome}
                        )  # fmt: skip
                    ctx.progress(done, total)
                # Their blobs are gone: forget them in one write per page, not one per object.
                if deleted:
                    self.index.forget_doomed(deleted)
                after = page[-1].pk
                cursor = {"after": after, "done": done, "counts": dict(counts),
                          "problems": problems}  # fmt: skip
                ctx.progress(done, total, cursor)
        return counts, problems

    def _pages(self, after: int) -> Iterator[list[_Object]]:
        """Every indexed object after instance pk ``after``, a page at a time."""
        tier = func.coalesce(instance_tiers.c.tier, self.tiers.default.name)
        columns = (
            instances.c.blob_key,
            instances.c.size,
            tier,
            instances.c.partition,
            studies.c.study_uid,
            series.c.series_uid,
            instances.c.sop_instance_uid,
            instances.c.sha256,
        )
        for rows in self.index.walk_instances(columns, after=after, page=_PAGE):
            yield [
                _Object(pk, key, size, t, BlobContext(*identity))
                for pk, key, size, t, *identity in rows
            ]

    # ------------------------------------------------------------------ one object
    def _rewrap(
        self, obj: _Object, kek_id: str, who: ActiveParticipant, job_id: int, deleted: list[str]
    ) -> str:
        """Re-wrap one object if its header names ``kek_id``; what happened, as a count name."""
        try:
            named = self.blobs.wrapped_key(obj.key, context=obj.context)
            if named is None or named.key_id != kek_id:
                return "not_named"
            copy = self._copy(obj, named)
        except RestoreRequired:
            return "awaiting_restore"
        except KeyErased:
            return "erased"
        except BlobNotFound:
            # Deleted or replaced since the page was read, or lost (the verify job tells).
            return "missing" if self._names(obj) else "changed"
        except BlobUnreadable as exc:
            log.error("rewrap: blob %s of instance %s: %s", obj.key, obj.context.sop_instance_uid,
                      exc.reason)  # fmt: skip
            return "unreadable"
        except _KeyMismatch as exc:
            log.error("rewrap: instance %s kept as it is: %s", obj.context.sop_instance_uid, exc)
            return "key_mismatch"
        if time.time() - copy.stored_at > self.orphan_grace_seconds / 2:
            # The reaper may already count the new blob as an orphan: never let a row name it.
            log.warning("rewrap: instance %s took too long to re-wrap; left for a later run",
                        obj.context.sop_instance_uid)  # fmt: skip
            self.blobs.delete(copy.key)
            return "abandoned"
        record = self.guard.record_job(self._event(who, obj, named, copy, job_id))
        if not self._swap(obj, copy.key, record):
            self.blobs.delete(copy.key)
            return "changed"
        try:
            self.blobs.delete(obj.key)
        except (NubisError, OSError) as exc:
            log.warning("rewrap: old blob %s left to the reaper: %s", obj.key, exc)
        else:
            deleted.append(obj.key)
        return "rewrapped"

    def _copy(self, obj: _Object, named: WrappedKey) -> _Copy:
        """The object under a new blob key with a fresh DEK, in its tier."""
        patient_id = self._patient_id(obj.pk)
        with self.spool.writer() as writer:
            for chunk in self.blobs.iter_chunks(obj.key, context=obj.context):
                writer.write(chunk)
            spooled = writer.finish()
        if (spooled.size, spooled.sha256) != (obj.size, obj.context.sha256):
            spooled.discard()
            raise BlobUnreadable("the decrypted bytes differ from the SHA-256 the index kept")
        new_key = self.blobs.new_key()
        stored_at = time.time()
        try:
            self.blobs.put_file(
                new_key, spooled, context=replace(obj.context, patient_id=patient_id)
            )
        finally:
            spooled.discard()  # consumed by a put that succeeded
        try:
            written = self.blobs.wrapped_key(new_key, context=obj.context)
            if written is None or written.key_id == named.key_id:
                raise _KeyMismatch(f"the new blob is wrapped by {written and written.key_id}")
            if written.subject != named.subject:
                # Only a Patient ID other than the one stored with the object could do this: a
                # shred of the patient would then no longer reach it.
                raise _KeyMismatch("the new blob would be wrapped by another patient key")
            if obj.tier != self.tiers.default.name and self.mover is not None:
                self.mover.move(new_key, self.tiers.get(obj.tier))
        except BaseException:
            self.blobs.delete(new_key)  # nothing names it yet
            raise
        return _Copy(new_key, stored_at, written.key_id, patient_id)

    def _patient_id(self, pk: int) -> str:
        """The Patient ID exactly as the object's store chose its patient key: from the
        object's own metadata (the study row keeps one per study, cut to its column)."""
        with self.index.reading() as conn:
            metadata = conn.execute(
                select(instances.c.metadata_json).where(instances.c.id == pk)
            ).scalar_one_or_none()
        if metadata is None:
            raise BlobNotFound(pk)
        values = (json.loads(metadata).get("00100020") or {}).get("Value") or []
        return "\\".join("" if v is None else str(v) for v in values)

    def _swap(
        self, obj: _Object, new_key: str, record: Callable[[Connection], object] | None
    ) -> bool:
        """Point the row at ``new_key`` if it still names the old blob in the same tier;
        queue the old blob for the reaper and append the audit record in the same commit."""
        default = self.tiers.default.name

        def job(conn: Connection) -> bool:
            # Locked (PostgreSQL) so a delete, overwrite or tier record of the instance is
            # ordered before or after this commit, never interleaved with it.
            alive = conn.execute(
                select(instances.c.id)
                .where(instances.c.id == obj.pk, instances.c.blob_key == obj.key)
                .with_for_update()
            ).first()
            if alive is None:
                return False
            tier = conn.execute(
                select(instance_tiers.c.tier).where(instance_tiers.c.instance_pk == obj.pk)
            ).scalar_one_or_none()
            if (tier or default) != obj.tier:
                return False
            conn.execute(update(instances).where(instances.c.id == obj.pk).values(blob_key=new_key))
            conn.execute(
                insert(doomed_blobs).values(blob_key=obj.key, queued_at=time.time_ns() // 10**6)
            )
            if record is not None:
                record(conn)
            return True

        return self.index.write(job)

    def _names(self, obj: _Object) -> bool:
        """Whether the object's row still names the blob it named when its page was read."""
        with self.index.reading() as conn:
            return (
                conn.execute(
                    select(instances.c.id).where(
                        instances.c.id == obj.pk, instances.c.blob_key == obj.key
                    )
                ).first()
                is not None
            )

    # ------------------------------------------------------------------ audit
    def _event(
        self, who: ActiveParticipant, obj: _Object, named: WrappedKey, copy: _Copy, job_id: int
    ) -> AuditEvent:
        c = obj.context
        objects = [audit_events.study_object(c.study_uid)]
        if copy.patient_id:
            objects.insert(0, audit_events.patient_object(copy.patient_id))
        return audit_events.security_alert(
            who,
            EventType.OBJECT_SECURITY_ATTRIBUTES_CHANGED,
            outcome=EventOutcome.SUCCESS,
            description=(
                f"instance {c.sop_instance_uid} re-encrypted under a fresh data key wrapped by "
                f"key-encryption key {copy.kek_id} (was {named.key_id}); same bytes (SHA-256 "
                f"{c.sha256}); blob {obj.key} replaced by {copy.key} (job {job_id})"
            ),
            front_door="system",
            objects=objects,
        )

    def _record(self, who: ActiveParticipant, outcome: EventOutcome, description: str) -> None:
        self.guard.record(
            audit_events.security_alert(
                who,
                EventType.SECURITY_CONFIGURATION,
                outcome=outcome,
                description=description,
                front_door="system",
            )
        )

    def _record_quietly(
        self, who: ActiveParticipant, outcome: EventOutcome, description: str
    ) -> None:
        try:
            self._record(who, outcome, description)
        except NubisError:
            log.error("rewrap: the outcome could not be recorded: %s", description)


class _KeyMismatch(Exception):
    """The new blob's header does not name the keys it must (see ``KekRewrap._copy``)."""
