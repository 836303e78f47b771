"""Lossless compression kept by a tier (``tier_compression``), done by the ``tier`` job.

When the lifecycle pass (nubis.tiers.lifecycle) finds an object that belongs in a tier with a
codec, and the object has uncompressed little endian pixel data it has not tried before, it
hands the object here instead of moving its blob. Blobs are write-once, so the object is
replaced the way a re-wrap replaces one (nubis.services.kek_rewrap):

1. read the stored object (decrypted and checked, as a read is) and check its size and
   SHA-256 against the index's;
2. re-encode it (nubis.dicom.recompress, with the encoders of nubis.dicom.codecs): accepted
   only once decoding the new file, and converting it back to the original transfer syntax,
   give the original's pixels exactly, and every other element is unchanged;
3. spool the new file (sealed when the archive encrypts), inspect it as ingest does (its frame
   and bulk data offsets, its metadata), and store it under a new blob key through the blob
   store as a store does (encrypted under a fresh data key, the same patient key), then move it
   into the tier;
4. swap in one index transaction: the row takes the new blob, transfer syntax, size, SHA-256,
   metadata and frame and bulk indexes only if it still names the old blob, in the same
   transfer syntax and the same tier (a delete, overwrite, re-wrap or tier move in between
   wins, and the new blob is deleted); ``instance_originals`` records the transfer syntax,
   size and SHA-256 the object arrived with; ``instance_tiers`` the tier; the old blob is
   queued in ``doomed_blobs``; and the audit record (DICOM Instances Accessed, action Update)
   is appended: all commit or none does;
5. the reaper deletes the old blob later, so reads that found the old row just before the swap
   still find its blob.

Crash safety is the re-wrap's: until the swap commits the row names the old blob, untouched;
a new blob stored before that is named by nothing and the reaper removes it as an orphan after
``orphan_grace_seconds``; a swap is abandoned if its new blob is older than half of that. A
swap that raises leaves its new blob to the reaper (its commit may have happened).

An object that cannot be re-encoded exactly (codec refuses it, values beyond Bits Stored,
colour that would come back converted) is kept as it is and recorded as tried
(``instance_originals.compressed`` false, with the reason), so later runs do not try again;
it still moves to the tier. Objects larger than :data:`LARGEST_OBJECT` are left uncompressed:
the codecs hold a whole object and its pixels in memory a few times over.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select, update

from nubis.dicom.inspect import InspectedInstance, inspect_file
from nubis.dicom.recompress import (
    LAYOUT_TAGS,
    RECOMPRESSIBLE,
    NotRecompressible,
    compress_verified,
)
from nubis.errors import BlobUnreadable, InvalidInstance, KeyErased, RestoreRequired
from nubis.index.database import Index
from nubis.index.schema import doomed_blobs, instance_originals, instance_tiers, instances
from nubis.index.upsert import upsert
from nubis.model.audit import ActiveParticipant, AuditEvent, EventAction
from nubis.ports.blobs import BlobContext, BlobNotFound, BlobStore
from nubis.security import audit_events
from nubis.tiers.movers import TierMover
from nubis.tiers.rules import Tiers

if TYPE_CHECKING:
    from nubis.services.guard import Guard
    from nubis.services.spool import Spool, SpooledFile

__all__ = ["LARGEST_OBJECT", "Candidate", "Outcome", "TierCompressor"]

log = logging.getLogger(__name__)

# Larger objects stay as they are: re-encoding holds the object, its decoded pixels and the
# new file in memory together.
LARGEST_OBJECT = 512 << 20
_NOTE_LENGTH = 256
# Metadata a codec changes: the pixels' layout, and Pixel Data's VR (encapsulated is OB).
_CODEC_KEYS = frozenset(f"{tag:08X}" for tag in LAYOUT_TAGS) | {"7FE00010"}


class Outcome(StrEnum):
    COMPRESSED = "compressed"
    KEPT = "kept_uncompressed"  # tried: not re-encodable exactly; recorded, moved as it is
    UNREADABLE = "unreadable"  # not readable now (damaged, erased key): moved as it is
    MISSING = "missing"
    WAITING = "waiting_for_restore"
    CHANGED = "changed"  # a delete, overwrite, re-wrap or move came first: a later run
    ABANDONED = "abandoned"  # too slow for the reaper's grace: a later run


@dataclass(frozen=True)
class Candidate:
    """An object the lifecycle pass found, as the index knew it then."""

    pk: int
    blob_key: str
    size: int
    sha256: str
    transfer_syntax_uid: str
    tier: str  # where it is now
    context: BlobContext  # without patient_id: a read does not need it
    patient_id: str | None  # the study's, for the audit record


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    size: int = 0  # the new blob's, when compressed


class TierCompressor:
    """Re-encodes objects losslessly for the tiers of ``policy`` (tier -> transfer syntax).

    Parameters
    ----------
    spool : Spool
        The archive's spool (sealed when it encrypts), where each new file waits for its put.
    bulk_threshold : int
        Ingest's, so the new file's metadata and bulk data index are cut as a store cuts them.
    orphan_grace_seconds : int
        The reaper's; a swap is abandoned when its new blob is older than half of it.
    """

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        spool: Spool,
        *,
        guard: Guard,
        tiers: Tiers,
        policy: Mapping[str, str],
        mover: TierMover | None,
        bulk_threshold: int,
        orphan_grace_seconds: int,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.spool = spool
        self.guard = guard
        self.tiers = tiers
        self.policy = dict(policy)
        self.mover = mover
        self.bulk_threshold = bulk_threshold
        self.orphan_grace_seconds = orphan_grace_seconds

    def wants(self, obj: Candidate, tier: str, tried: bool) -> bool:
        """Whether ``obj``, belonging in ``tier``, is to be re-encoded (else it just moves)."""
        return (
            tier in self.policy
            and not tried
            and obj.transfer_syntax_uid in RECOMPRESSIBLE
            and obj.size <= LARGEST_OBJECT
        )

    # ------------------------------------------------------------------ one object
    def compress(
        self, obj: Candidate, tier: str, who: ActiveParticipant | None, job_id: int | None
    ) -> Result:
        """Re-encode ``obj`` for ``tier`` and put it there; see the module docstring."""
        target_ts = self.policy[tier]
        try:
            original = self._read(obj)
        except RestoreRequired:
            return Result(Outcome.WAITING)
        except BlobNotFound:
            return Result(Outcome.MISSING if self._names(obj) else Outcome.CHANGED)
        except (BlobUnreadable, KeyErased) as exc:
            log.error("tier compression: instance %s not readable: %s",
                      obj.context.sop_instance_uid, exc.reason)  # fmt: skip
            return Result(Outcome.UNREADABLE)
        metadata = self._metadata(obj.pk)
        if metadata is None:
            return Result(Outcome.CHANGED)
        try:
            spooled, inspected = self._recompressed(obj, original, target_ts, metadata)
        except NotRecompressible as exc:
            log.info("tier compression: instance %s kept as it is: %s",
                     obj.context.sop_instance_uid, exc.reason)  # fmt: skip
            return Result(Outcome.KEPT if self._keep(obj, exc.reason) else Outcome.CHANGED)
        new_key, stored_at = self._store(obj, spooled, tier, _patient_id(metadata))
        if time.time() - stored_at > self.orphan_grace_seconds / 2:
            # The reaper may already count the new blob as an orphan: never let a row name it.
            log.warning("tier compression: instance %s took too long; left for a later run",
                        obj.context.sop_instance_uid)  # fmt: skip
            self.blobs.delete(new_key)
            return Result(Outcome.ABANDONED)
        record = None
        if who is not None:
            event = _event(who, obj, tier, target_ts, new_key, spooled, job_id)
            record = self.guard.record_job(event)
        if not self._swap(obj, tier, new_key, spooled, inspected, record):
            self.blobs.delete(new_key)
            return Result(Outcome.CHANGED)
        return Result(Outcome.COMPRESSED, spooled.size)

    def _read(self, obj: Candidate) -> bytes:
        data = self.blobs.read(obj.blob_key, context=obj.context)
        if len(data) != obj.size or hashlib.sha256(data).hexdigest() != obj.sha256:
            raise BlobUnreadable("the stored bytes differ from the SHA-256 the index kept")
        return data

    def _metadata(self, pk: int) -> dict[str, Any] | None:
        with self.index.reading() as conn:
            text = conn.execute(
                select(instances.c.metadata_json).where(instances.c.id == pk)
            ).scalar_one_or_none()
        return None if text is None else dict(json.loads(text))

    def _recompressed(
        self, obj: Candidate, original: bytes, target_ts: str, metadata: dict[str, Any]
    ) -> tuple[SpooledFile, InspectedInstance]:
        """The new file, spooled and inspected; NotRecompressible says why there is none."""
        new = compress_verified(io.BytesIO(original), target_ts)
        with self.spool.writer() as writer:
            writer.write(new)
            spooled = writer.finish()
        try:
            inspected = inspect_file(spooled.open(), bulk_threshold=self.bulk_threshold)
            c = obj.context
            if (
                inspected.transfer_syntax_uid != target_ts
                or inspected.sop_instance_uid != c.sop_instance_uid
                or inspected.study_instance_uid != c.study_uid
                or inspected.series_instance_uid != c.series_uid
            ):
                raise NotRecompressible("the new file does not name the same object")
            if _but_codec_keys(inspected.metadata) != _but_codec_keys(metadata):
                raise NotRecompressible("the new file's metadata differs from the stored one's")
        except InvalidInstance as exc:
            spooled.discard()
            raise NotRecompressible(f"ingest would refuse the new file: {exc.reason}") from exc
        except BaseException:
            spooled.discard()
            raise
        return spooled, inspected

    def _store(
        self, obj: Candidate, spooled: SpooledFile, tier: str, patient_id: str
    ) -> tuple[str, float]:
        """Put the new file under a new key, in ``tier``; the key and when it was stored."""
        new_key = self.blobs.new_key()
        c = obj.context
        context = BlobContext(
            c.partition, c.study_uid, c.series_uid, c.sop_instance_uid, spooled.sha256,
            patient_id=patient_id,
        )  # fmt: skip
        stored_at = time.time()
        try:
            self.blobs.put_file(new_key, spooled, context=context)
        finally:
            spooled.discard()  # consumed by a put that succeeded
        try:
            if tier != self.tiers.default.name and self.mover is not None:
                self.mover.move(new_key, self.tiers.get(tier))
        except BaseException:
            self.blobs.delete(new_key)  # nothing names it yet
            raise
        return new_key, stored_at

    def _swap(
        self,
        obj: Candidate,
        tier: str,
        new_key: str,
        spooled: SpooledFile,
        inspected: InspectedInstance,
        record: Callable[[Connection], object] | None,
    ) -> bool:
        """Point the row at the new blob if it still names the old one, in the same syntax
        and tier; record the original, the tier, the doomed old blob and the audit record in
        the same commit."""
        now = time.time_ns() // 1_000_000
        frames = inspected.frame_index
        values = {
            "blob_key": new_key,
            "size": spooled.size,
            "sha256": spooled.sha256,
            "transfer_syntax_uid": inspected.transfer_syntax_uid,
            "metadata_json": inspected.metadata_json,
            "frame_index": None if frames is None else _compact(frames),
            "bulk_index": _compact(inspected.bulk_index) if inspected.bulk_index else None,
        }
        original = {
            "instance_pk": obj.pk,
            "transfer_syntax_uid": obj.transfer_syntax_uid,
            "size": obj.size,
            "sha256": obj.sha256,
            "compressed": True,
            "note": None,
            "at": now,
        }

        def job(conn: Connection) -> bool:
            if not self._still(conn, obj):
                return False
            conn.execute(update(instances).where(instances.c.id == obj.pk).values(**values))
            upsert(conn, instance_originals, "instance_pk", original)
            upsert(conn, instance_tiers, "instance_pk",
                    {"instance_pk": obj.pk, "tier": tier, "moved_at": now})  # fmt: skip
            conn.execute(doomed_blobs.insert().values(blob_key=obj.blob_key, queued_at=now))
            if record is not None:
                record(conn)
            return True

        return self.index.write(job)

    def _still(self, conn: Connection, obj: Candidate) -> bool:
        """Whether the row still names the blob, syntax and tier the pass found (locked on
        PostgreSQL, so a delete, overwrite, re-wrap or move is ordered before or after us)."""
        alive = conn.execute(
            select(instances.c.id)
            .where(
                instances.c.id == obj.pk,
                instances.c.blob_key == obj.blob_key,
                instances.c.transfer_syntax_uid == obj.transfer_syntax_uid,
            )
            .with_for_update()
        ).first()
        if alive is None:
            return False
        tier = conn.execute(
            select(instance_tiers.c.tier).where(instance_tiers.c.instance_pk == obj.pk)
        ).scalar_one_or_none()
        return (tier or self.tiers.default.name) == obj.tier

    def _keep(self, obj: Candidate, reason: str) -> bool:
        """Record that ``obj`` was tried and is kept as it is; False if its row changed."""
        row = {
            "instance_pk": obj.pk,
            "transfer_syntax_uid": obj.transfer_syntax_uid,
            "size": obj.size,
            "sha256": obj.sha256,
            "compressed": False,
            "note": reason[:_NOTE_LENGTH],
            "at": time.time_ns() // 1_000_000,
        }

        def job(conn: Connection) -> bool:
            alive = conn.execute(
                select(instances.c.id)
                .where(instances.c.id == obj.pk, instances.c.blob_key == obj.blob_key)
                .with_for_update()
            ).first()
            if alive is None:
                return False
            upsert(conn, instance_originals, "instance_pk", row)
            return True

        return self.index.write(job)

    def _names(self, obj: Candidate) -> bool:
        """Whether the row still names the blob it named when the pass found it."""
        with self.index.reading() as conn:
            found = conn.execute(
                select(instances.c.id).where(
                    instances.c.id == obj.pk, instances.c.blob_key == obj.blob_key
                )
            ).first()
        return found is not None


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _but_codec_keys(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {tag: v for tag, v in metadata.items() if tag not in _CODEC_KEYS}


def _patient_id(metadata: Mapping[str, Any]) -> str:
    """The Patient ID exactly as the object's store chose its patient key: from the object's
    own metadata (the study row keeps one per study, cut to its column)."""
    values = (metadata.get("00100020") or {}).get("Value") or []
    return "\\".join("" if v is None else str(v) for v in values)


def _event(
    who: ActiveParticipant,
    obj: Candidate,
    tier: str,
    target_ts: str,
    new_key: str,
    spooled: SpooledFile,
    job_id: int | None,
) -> AuditEvent:
    c = obj.context
    job = f" (job {job_id})" if job_id is not None else ""
    return audit_events.instances_accessed(
        who,
        patient_id=obj.patient_id,
        study_uids=[c.study_uid],
        action=EventAction.UPDATE,
        front_door="system",
        description=(
            f"instance {c.sop_instance_uid} re-encoded losslessly for storage tier {tier}: "
            f"{obj.transfer_syntax_uid} to {target_ts}, pixel data checked identical; "
            f"{obj.size} to {spooled.size} bytes (SHA-256 {obj.sha256} to {spooled.sha256}); "
            f"blob {obj.blob_key} replaced by {new_key}{job}"
        ),
    )
