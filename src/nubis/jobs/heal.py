"""Self-healing: put a good copy back in place of a missing or damaged blob (the verify job
calls it for each object that fails its check).

A copy is taken from the first source (nubis.ports.copies: backup folders, later replicas)
that holds one passing, in order:

1. the size and SHA-256 the source recorded for the stored bytes;
2. the object's own check, exactly as the verify job reads it: the copy is put into a scratch
   folder store wrapped as the archive's store is (for encrypted blobs the AES-GCM tags, the
   wrapped key and the object bound to the ciphertext), and the plaintext read back must have
   the size and SHA-256 the index kept for the object.

Only then is the damaged blob deleted (the good copy is in hand; a crash before the put leaves
a missing blob, which the next verify heals from the same source) and the copy put through
the archive's blob store, create-only, as stored. The object is read back through the archive
once more before it counts as repaired. Bytes that fail any check never replace anything.

Limits: a blob healed in a folder-tiered store lands in the first tier whatever tier the index
records (reads find it there, as after a restore); an object deleted while it is being healed
leaves an orphan blob, which the reaper removes after ``orphan_grace_seconds``.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import shutil
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.blobs.filesystem import FileBlobStore
from nubis.blobs.integrity import verify_chunks
from nubis.errors import BlobCorrupted, BlobUnreadable, KeyUnavailable
from nubis.ports.blobs import BlobContext, BlobExists, BlobNotFound, BlobStore, PlainFile
from nubis.ports.copies import CopySource

__all__ = ["Healer", "Repair"]

log = logging.getLogger(__name__)


@dataclass
class Repair:
    """How healing one object went: the source it was repaired from, or why it was not."""

    source: str | None = None
    refused: list[str] = field(default_factory=list)

    @property
    def repaired(self) -> bool:
        return self.source is not None

    def describe(self) -> str:
        if self.source is not None:
            return f"repaired from {self.source}"
        return "not repairable: " + ("; ".join(self.refused) or "no copy source")


class Healer:
    """Heals blobs of the archive store ``blobs`` from ``sources``, tried in order; temporary
    files go to ``scratch`` (the spool: same file system as a folder store's blobs)."""

    def __init__(self, blobs: BlobStore, sources: Sequence[CopySource], scratch: Path) -> None:
        self.blobs = blobs
        self.raw = blobs.inner if isinstance(blobs, EncryptedBlobStore) else blobs
        self.sources = list(sources)
        self.scratch = scratch

    def heal(self, key: str, size: int, sha256: str, context: BlobContext) -> Repair:
        repair = Repair()
        work = self.scratch / f"heal-{secrets.token_hex(8)}"
        work.mkdir(parents=True)
        try:
            for source in self.sources:
                why = self._heal_from(source, work, key, size, sha256, context)
                if why is None:
                    repair.source = source.name
                    break
                repair.refused.append(f"{source.name}: {why}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return repair

    def _heal_from(
        self,
        source: CopySource,
        work: Path,
        key: str,
        size: int,
        sha256: str,
        context: BlobContext,
    ) -> str | None:
        """None when ``source``'s copy replaced the blob; else why it did not."""
        copy = work / "copy"
        copy.unlink(missing_ok=True)
        try:
            recorded = source.copy_of(key, copy)
        except OSError as exc:
            return f"copy unreadable ({exc.strerror or exc})"
        if recorded is None:
            return "holds no copy"
        if copy.stat().st_size != recorded.size or _sha256(copy) != recorded.sha256:
            return "its copy differs from the digest it recorded (damaged)"
        problem = self._object_check(work, copy, recorded.size, key, size, sha256, context)
        if problem is not None:
            return f"its copy fails the object's check ({problem})"
        self.raw.delete(key)
        # BlobExists: healed meanwhile by another node, checked below like our own put.
        with suppress(BlobExists):
            self.raw.put_file(key, PlainFile(copy, recorded.size), context=context)
        if _read_problem(self.blobs, key, size, sha256, context) is not None:
            return "the repaired blob does not read back"
        return None

    def _object_check(
        self,
        work: Path,
        copy: Path,
        stored_size: int,
        key: str,
        size: int,
        sha256: str,
        context: BlobContext,
    ) -> str | None:
        """The copy read as the archive reads the object, from a scratch store of its own."""
        trial_root = work / "trial"
        shutil.rmtree(trial_root, ignore_errors=True)
        trial_file = work / "trial-copy"
        shutil.copyfile(copy, trial_file)
        plain = FileBlobStore(trial_root, durable=False)
        plain.put_file(key, PlainFile(trial_file, stored_size), context=context)
        trial: BlobStore = plain
        if isinstance(self.blobs, EncryptedBlobStore):
            trial = EncryptedBlobStore(
                plain, self.blobs.keys, accept_plaintext=self.blobs.accept_plaintext
            )
        return _read_problem(trial, key, size, sha256, context)


def _read_problem(
    blobs: BlobStore, key: str, size: int, sha256: str, context: BlobContext
) -> str | None:
    try:
        verify_chunks(blobs.iter_chunks(key, context=context), size, sha256)
    except BlobNotFound:
        return "missing"
    except (BlobCorrupted, BlobUnreadable, KeyUnavailable) as exc:
        return exc.reason
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
