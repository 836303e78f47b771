"""The ``backup`` job: an online snapshot of the index, then the blobs it references, copied
incrementally into a backup folder, then the manifest (nubis.backup.manifest).

The server keeps taking stores throughout: the snapshot is one read transaction, and the
blobs copied are those of the snapshot's instances, read from the snapshot itself, so objects
stored later wait for the next backup. A blob the folder holds already (its key is in the
previous manifest with the same size, or a run cut short copied it) is not read again: keys are
random and written once. Each blob is copied as stored (ciphertext when encrypted at rest:
no key is needed, nor used) and checked on the way: a plaintext blob against the size and
SHA-256 the index kept for its object, an encrypted one for its envelope and a size beyond the
object's; the manifest records the stored bytes' size and SHA-256, which ``nubis backup
verify`` and the restore check.

A blob the snapshot names but the archive no longer has, because its instance was deleted and
reaped after the snapshot, is listed in the manifest as absent, as are blobs missing or
damaged in the archive (the job's result and its audit record name how many; its outcome is
then a minor failure).

Run by the ``nubis backup`` process that queued it (the folder is that machine's), like
``migrate``: servers' runners leave it alone. A run interrupted resumes from what the folder
holds. The backup is audited as an Export (PS3.15 A.5.3.6) of the whole archive, when it begins
and how it ended.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nubis.backup.manifest import BackupFolder, BlobEntry, Manifest
from nubis.backup.snapshot import StoredObject, stream_sha256, take_snapshot
from nubis.backup.target import open_target
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.crypto.envelope import HEADER_RESERVE, is_encrypted
from nubis.errors import BlobCorrupted, RestoreRequired
from nubis.index.database import Index
from nubis.jobs.context import JobContext
from nubis.model.audit import EventOutcome
from nubis.ports.blobs import BlobNotFound, BlobStore
from nubis.ports.keys import KeyProvider
from nubis.security import audit_events
from nubis.security.policy import Principal
from nubis.services.guard import Guard

__all__ = ["KIND", "Backup", "stored_bytes"]

KIND = "backup"

# Blobs copied at once: reads of one blob wait on the disk or the network, not the CPU.
_COPIERS = 4


def stored_bytes(blobs: BlobStore) -> BlobStore:
    """The store under the encryption, whose reads and puts are the bytes as stored."""
    return blobs.inner if isinstance(blobs, EncryptedBlobStore) else blobs


@dataclass(frozen=True)
class _Copied:
    key: str
    entry: BlobEntry | None
    absent: str | None = None
    copied_bytes: int = 0


class Backup:
    """Backs up the archive whose parts are given, for ``principal`` (authorized by the
    caller: the backup reads every tenant's data)."""

    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        keys: KeyProvider | None,
        keyring_kind: str | None,
        guard: Guard,
        principal: Principal,
    ) -> None:
        self.index = index
        self.raw = stored_bytes(blobs)
        self.keys = keys
        self.keyring_kind = keyring_kind
        self.guard = guard
        self.principal = principal

    def run(self, ctx: JobContext) -> dict[str, Any]:
        folder = BackupFolder(open_target(ctx.params["to"]))
        started = time.monotonic()
        created = datetime.now(UTC)
        stamp = created.strftime("%Y%m%dT%H%M%S%fZ")
        who = audit_events.participant(self.principal)
        self.guard.record(
            audit_events.data_export(
                who,
                front_door="cli",
                description=f"backup of the whole archive to {_shown(folder)}: begins",
            )
        )
        snapshot_name = folder.snapshot_name(stamp, self.index.dialect)
        staging = folder.target.staging()
        for leftover in staging.iterdir():  # of a run cut short: its snapshot is stale
            leftover.unlink()
        snapshot = take_snapshot(self.index, staging / f"snapshot-{stamp}")
        previous = folder.latest()
        known = previous.blobs if previous is not None else {}
        held = folder.target.sizes("blobs/")
        total = len(snapshot.objects)
        ctx.progress(0, total)
        blobs: dict[str, BlobEntry] = {}
        absent: dict[str, str] = {}
        copied = copied_bytes = 0
        pending = [o for o in snapshot.objects if not self._held(held, known, o, blobs)]
        reused = total - len(pending)
        with ThreadPoolExecutor(_COPIERS, thread_name_prefix="nubis-backup") as pool:
            copier = self._copier(folder, held)
            for done, result in enumerate(pool.map(copier, pending), reused + 1):
                if result.entry is not None:
                    blobs[result.key] = result.entry
                    copied += bool(result.copied_bytes)
                    copied_bytes += result.copied_bytes
                else:
                    assert result.absent is not None
                    absent[result.key] = result.absent
                ctx.progress(done, total)
        self._recheck_vanished(absent)
        # The snapshot and then the manifest go last: a backup cut short before them is never
        # taken for a finished one (its blobs serve the next run).
        folder.target.put(snapshot_name, snapshot.path)
        manifest = Manifest(
            created_at=created.isoformat(),
            finished_at=datetime.now(UTC).isoformat(),
            engine=snapshot.engine,
            snapshot=snapshot_name,
            snapshot_sha256=snapshot.sha256,
            snapshot_size=snapshot.size,
            schema_version=snapshot.schema_version,
            audit=snapshot.audit,
            keyring=self.keyring_kind if self.keys is not None else None,
            kek_ids=self.keys.key_ids() if self.keys is not None else [],
            blobs=blobs,
            absent=absent,
        )
        folder.write(manifest, stamp)
        elapsed = max(time.monotonic() - started, 1e-6)
        damaged = {k: v for k, v in absent.items() if v != _VANISHED}
        summary = (
            f"backup {stamp} to {_shown(folder)}: {total} object(s), {copied} blob(s) copied "
            f"({copied_bytes} bytes), {reused} already backed up"
            + (f", {len(absent) - len(damaged)} deleted since the snapshot" if absent else "")
            + (f", {len(damaged)} missing or damaged in the archive" if damaged else "")
        )
        self.guard.record(
            audit_events.data_export(
                who,
                front_door="cli",
                outcome=EventOutcome.MINOR_FAILURE if damaged else EventOutcome.SUCCESS,
                description=summary,
            )
        )
        return {
            "backup": stamp,
            "folder": folder.where,
            "objects": total,
            "copied": copied,
            "copied_bytes": copied_bytes,
            "already_backed_up": reused,
            "absent": absent,
            "audit_head": snapshot.audit.seq,
            "snapshot_bytes": snapshot.size,
            "seconds": round(elapsed, 3),
            "mb_per_s": round(copied_bytes / 1e6 / elapsed, 1),
        }

    @staticmethod
    def _held(
        held: dict[str, int],
        known: dict[str, BlobEntry],
        obj: StoredObject,
        blobs: dict[str, BlobEntry],
    ) -> bool:
        """Whether the target holds the blob already, as the previous manifest recorded it."""
        entry = known.get(obj.key)
        if entry is None or held.get(BackupFolder.blob_name(obj.key)) != entry.size:
            return False
        blobs[obj.key] = entry
        return True

    def _copier(
        self, folder: BackupFolder, held: dict[str, int]
    ) -> Callable[[StoredObject], _Copied]:
        def copy(obj: StoredObject) -> _Copied:
            name = folder.blob_name(obj.key)
            if name in held:  # copied and checked by a run cut short before its manifest
                with folder.target.open(name) as f:
                    entry = BlobEntry(held[name], stream_sha256(f))
                return _Copied(obj.key, entry)
            try:
                entry = self._copy(obj, folder, name)
            except BlobNotFound:
                return _Copied(obj.key, None, absent=_MISSING)
            except BlobCorrupted:
                return _Copied(obj.key, None, absent=_DAMAGED)
            except RestoreRequired:
                return _Copied(obj.key, None, absent=_ARCHIVED)
            return _Copied(obj.key, entry, copied_bytes=entry.size)

        return copy

    def _copy(self, obj: StoredObject, folder: BackupFolder, name: str) -> BlobEntry:
        partial = folder.target.staging() / f".{obj.key}.partial"
        digest = hashlib.sha256()
        size = 0
        head = b""
        try:
            with open(partial, "wb") as f:
                for chunk in self.raw.iter_chunks(obj.key, context=obj.context):
                    if len(head) < HEADER_RESERVE:
                        head += chunk[: HEADER_RESERVE - len(head)]
                    digest.update(chunk)
                    size += len(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            sha256 = digest.hexdigest()
            if is_encrypted(head):
                # Without the keys only the envelope can be checked: its tags are checked by
                # the restore's reads. Ciphertext is the object plus a header and tags.
                if size <= obj.size:
                    raise BlobCorrupted("encrypted blob shorter than its object")
            elif size != obj.size or sha256 != obj.sha256:
                raise BlobCorrupted("stored object failed its integrity check")
            folder.target.put(name, partial)
        finally:
            partial.unlink(missing_ok=True)
        return BlobEntry(size, sha256)

    def _recheck_vanished(self, absent: dict[str, str]) -> None:
        """A blob missing because its instance was deleted after the snapshot is no damage."""
        missing = [k for k, why in absent.items() if why == _MISSING]
        for start in range(0, len(missing), 500):
            batch = missing[start : start + 500]
            live = self.index.referenced_blob_keys(batch)
            for key in batch:
                if key not in live:
                    absent[key] = _VANISHED


def _shown(folder: BackupFolder) -> str:
    """The target as the audit trail names it: an S3 URL without its query (endpoint, CA)."""
    return folder.where.split("?", 1)[0]


_VANISHED = "deleted after the snapshot"
_MISSING = "missing in the archive"
_DAMAGED = "damaged in the archive"
_ARCHIVED = "in an archive tier (restore it from the tier first)"
