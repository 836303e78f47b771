"""Re-encrypt stored objects one by one and swap them in: what the ``rewrap`` job (a new KEK,
nubis.services.kek_rewrap) and the ``rekey`` job (a new patient key after a correction,
nubis.services.study_rekey) share. They differ only in which objects they take and under
which keys the new blob must be wrapped (:meth:`Reencryption._target`).

Blob stores are write-once, so an object is re-encrypted by writing a NEW blob with the same
plaintext and swapping the blob key in its index row. Per object:

1. decrypt the old blob as a read does (every AES-GCM tag checked) into a *sealed* spool file:
   the plaintext is re-encrypted as it streams, under a fresh DEK held only in memory
   (nubis.services.spool), and its SHA-256 and size must equal the index's;
2. store that file under a new blob key as a store does (the header wraps the fresh DEK under
   the current KEK and the target patient's key, checked by reading the new header back); move
   the new blob into the tier the index records for the object;
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
that died with the process and is cleared at the next start. Reads go on throughout: a row
names one blob at a time, and a read finds the keys of that blob in its own header.

Objects in an archive tier that are not restored cannot be read (the read asks for a restore,
as every read does): they are counted as ``awaiting_restore``. Objects whose patient key was
shredded can never be read again: ``erased``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from sqlalchemy import ColumnElement, Connection, func, insert, select, update

from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.errors import BlobUnreadable, KeyErased, NubisError, RestoreRequired
from nubis.index.database import Index
from nubis.index.schema import doomed_blobs, instance_tiers, instances, series, studies
from nubis.jobs.context import JobContext
from nubis.model.audit import ActiveParticipant, AuditEvent, EventOutcome, EventType
from nubis.ports.blobs import BlobContext, BlobNotFound
from nubis.ports.keys import WrappedKey
from nubis.security import audit_events
from nubis.services.guard import Guard
from nubis.services.spool import Spool
from nubis.tiers.movers import TierMover
from nubis.tiers.rules import Tiers

__all__ = [
    "PROBLEMS",
    "Copy",
    "KeyMismatch",
    "Reencryption",
    "StoredObject",
    "Target",
    "Targeting",
]

log = logging.getLogger(__name__)

PAGE = 200
LISTED_PROBLEMS = 200
# Outcomes that leave an object under the keys it had, listed in the result for the operator.
PROBLEMS = ("abandoned", "awaiting_restore", "erased", "key_mismatch", "missing", "unreadable")


@dataclass(frozen=True)
class StoredObject:
    """One indexed object as the pass found it."""

    pk: int
    key: str
    size: int
    tier: str
    context: BlobContext  # without patient_id: a read does not need it


@dataclass(frozen=True)
class Target:
    """The keys an object's new blob is wrapped under: the key of ``patient_id``, whose id
    ``subject`` its header must name, and the current KEK, which must not be ``not_kek``."""

    patient_id: str
    subject: str
    not_kek: str | None = None


@dataclass(frozen=True)
class Copy:
    """The new blob of an object, not yet named by its row."""

    key: str
    stored_at: float  # wall clock before the put, as the reaper's listing times are
    kek_id: str  # the KEK its header names
    subject: str  # the patient key its header names
    patient_id: str


# The keys an object is to be wrapped under, or the name of the count of an object left as it
# is; given the object and the keys its header names (None for a plaintext blob).
Targeting = Callable[[StoredObject, WrappedKey | None], Target | str]


class KeyMismatch(Exception):
    """The new blob's header would not name the keys it must: the object is kept as it is."""


class Reencryption:
    """The per-object mechanism (see the module docstring); a job subclasses it, says which
    objects to take and under which keys (a :data:`Targeting` per pass), and how each is
    recorded (:meth:`_event`).

    Parameters
    ----------
    spool : Spool
        A sealed spool beside the blobs, where each object is re-encrypted on its way.
    actor : ActiveParticipant
        The archive as the audit records' participant; the job's creator is added as its name.
    orphan_grace_seconds : int
        The reaper's; a swap is abandoned when its new blob is older than half of it.
    """

    name = "reencrypt"  # in log lines and thread names

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
            raise ValueError("re-encrypting needs a sealed spool: plaintext never reaches disk")
        self.index = index
        self.blobs = blobs
        self.spool = spool
        self.guard = guard
        self.tiers = tiers
        self.mover = mover
        self.actor = actor
        self.orphan_grace_seconds = orphan_grace_seconds

    # ------------------------------------------------------------------ for subclasses
    def _key_change(self, named: WrappedKey, copy: Copy) -> str:
        """What wraps the object's fresh data key now, and what wrapped the old one, for its
        audit record (e.g. "key-encryption key k2 (was k1)")."""
        raise NotImplementedError

    def _event(
        self, who: ActiveParticipant, obj: StoredObject, named: WrappedKey, copy: Copy, job_id: int
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
                f"{self._key_change(named, copy)}; same bytes (SHA-256 {c.sha256}); blob "
                f"{obj.key} replaced by {copy.key} (job {job_id})"
            ),
            front_door="system",
            objects=objects,
        )

    # ------------------------------------------------------------------ pages
    def _pages(
        self, after: int, where: Sequence[ColumnElement[bool]] = ()
    ) -> Iterator[list[StoredObject]]:
        """Every indexed object ``where`` selects after instance pk ``after``, a page at a
        time."""
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
        for rows in self.index.walk_instances(columns, where=where, after=after, page=PAGE):
            yield [
                StoredObject(pk, key, size, t, BlobContext(*identity))
                for pk, key, size, t, *identity in rows
            ]

    def _do_page(
        self,
        ctx: JobContext,
        pool: ThreadPoolExecutor,
        page: list[StoredObject],
        target: Targeting,
        who: ActiveParticipant,
        counts: Counter[str],
        problems: list[dict[str, str]],
        done: int,
        total: int | None,
    ) -> int:
        """Re-encrypt what a page needs, ``workers`` objects at once; the count done after it."""
        deleted: list[str] = []

        def one(obj: StoredObject) -> str:
            ctx.check()
            return self._reencrypt(obj, target, who, ctx.job.id, deleted)

        for obj, outcome in zip(page, pool.map(one, page), strict=True):
            done += 1
            counts[outcome] += 1
            if outcome == self._done_name:
                counts["bytes"] += obj.size
            if outcome in PROBLEMS and len(problems) < LISTED_PROBLEMS:
                c = obj.context
                problems.append(
                    {"partition": c.partition, "study": c.study_uid,
                     "instance": c.sop_instance_uid, "problem": outcome}
                )  # fmt: skip
            ctx.progress(done, total)
        # Their blobs are gone: forget them in one write per page, not one per object.
        if deleted:
            self.index.forget_doomed(deleted)
        return done

    _done_name = "reencrypted"  # the count of objects swapped in

    def _pool(self, ctx: JobContext) -> ThreadPoolExecutor:
        workers = max(1, int(ctx.params.get("workers") or 4))
        return ThreadPoolExecutor(workers, thread_name_prefix=f"nubis-{self.name}")

    # ------------------------------------------------------------------ one object
    def _reencrypt(
        self,
        obj: StoredObject,
        target: Targeting,
        who: ActiveParticipant,
        job_id: int,
        deleted: list[str],
    ) -> str:
        """Re-encrypt one object if ``target`` says so; what happened, as a count name."""
        try:
            named = self.blobs.wrapped_key(obj.key, context=obj.context)
            keys = target(obj, named)
            if isinstance(keys, str):
                return keys
            assert named is not None  # a plaintext blob has no keys to change
            copy = self._copy(obj, named, keys)
        except RestoreRequired:
            return "awaiting_restore"
        except KeyErased:
            return "erased"
        except BlobNotFound:
            # Deleted or replaced since the page was read, or lost (the verify job tells).
            return "missing" if self._names(obj) else "changed"
        except BlobUnreadable as exc:
            log.error("%s: blob %s of instance %s: %s", self.name, obj.key,
                      obj.context.sop_instance_uid, exc.reason)  # fmt: skip
            return "unreadable"
        except KeyMismatch as exc:
            log.error("%s: instance %s kept as it is: %s", self.name,
                      obj.context.sop_instance_uid, exc)  # fmt: skip
            return "key_mismatch"
        if time.time() - copy.stored_at > self.orphan_grace_seconds / 2:
            # The reaper may already count the new blob as an orphan: never let a row name it.
            log.warning("%s: instance %s took too long to re-encrypt; left for a later run",
                        self.name, obj.context.sop_instance_uid)  # fmt: skip
            self.blobs.delete(copy.key)
            return "abandoned"
        record = self.guard.record_job(self._event(who, obj, named, copy, job_id))
        if not self._swap(obj, copy.key, record):
            self.blobs.delete(copy.key)
            return "changed"
        try:
            self.blobs.delete(obj.key)
        except (NubisError, OSError) as exc:
            log.warning("%s: old blob %s left to the reaper: %s", self.name, obj.key, exc)
        else:
            deleted.append(obj.key)
        return self._done_name

    def _copy(self, obj: StoredObject, named: WrappedKey, target: Target) -> Copy:
        """The object under a new blob key with a fresh DEK wrapped for ``target``, in its
        tier."""
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
                new_key, spooled, context=replace(obj.context, patient_id=target.patient_id)
            )
        finally:
            spooled.discard()  # consumed by a put that succeeded
        try:
            written = self.blobs.wrapped_key(new_key, context=obj.context)
            if written is None or written.key_id == target.not_kek:
                raise KeyMismatch(f"the new blob is wrapped by {written and written.key_id}")
            if written.subject != target.subject:
                # A shred of the patient the object is meant for would not reach it.
                raise KeyMismatch("the new blob would be wrapped by another patient key")
            if obj.tier != self.tiers.default.name and self.mover is not None:
                self.mover.move(new_key, self.tiers.get(obj.tier))
        except BaseException:
            self.blobs.delete(new_key)  # nothing names it yet
            raise
        return Copy(new_key, stored_at, written.key_id, written.subject, target.patient_id)

    def _swap(
        self, obj: StoredObject, new_key: str, record: Callable[[Connection], object] | None
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

    def _names(self, obj: StoredObject) -> bool:
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
            log.error("%s: the outcome could not be recorded: %s", self.name, description)
