"""The blob store port: where the bytes of stored objects live.

A blob store is not a filesystem: it offers create-once puts, ranged reads, delete and list,
nothing else. Keys are opaque and chosen by the caller (the index owns them); a backend must
never derive meaning from a key. Implementations are synchronous: the services run in worker
threads (see docs/architecture.md).

Every put and read names the object the blob belongs to (:class:`BlobContext`). A plain store
ignores it; the encrypted store (nubis.blobs.encrypted) binds it to the ciphertext, so a blob
read as any other object than the one it was written for fails instead of returning its bytes.
The services pass it and otherwise do not know whether blobs are encrypted.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class BlobCapabilities:
    # The store can take ownership of a spooled local file without copying it (same filesystem).
    adopts_local_files: bool
    range_reads: bool
    # Every read is authenticated against what was written (AEAD tags over the plaintext whose
    # SHA-256 the index keeps): re-hashing on read would prove nothing more.
    authenticated_reads: bool = False
    # Each read is a network round trip (an object store): readers fetch ahead, in parallel.
    remote: bool = False


@dataclass(frozen=True)
class BlobInfo:
    """A listed blob. ``size`` is the bytes it occupies in the store, which is the object's
    size for a plain store and more for the encrypted one (header, tags): the object's size
    is the index's to know, and capacity and cost are counted in stored bytes."""

    key: str
    size: int
    modified_at: float


@dataclass(frozen=True)
class BlobContext:
    """The object a blob holds, as the index knows it.

    ``patient_id`` chooses the patient key on a put (crypto-shredding, nubis.ports.keys) and is
    not needed to read: the blob's header names its key. Everything else is authenticated
    (:meth:`associated_data`) on put and checked on every read.
    """

    partition: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sha256: str
    patient_id: str | None = None

    def associated_data(self) -> bytes:
        # Length-prefixed, so no two different contexts encode alike.
        fields = (self.partition, self.study_uid, self.series_uid, self.sop_instance_uid)
        out = bytearray(b"nubis object v1")
        for text in (*fields, self.sha256):
            raw = text.encode()
            out += struct.pack(">H", len(raw)) + raw
        return bytes(out)


class LocalFile(Protocol):
    """A local file handed to :meth:`BlobStore.put_file` (a spooled object).

    ``seal`` is None for plaintext bytes. A spool may encrypt as the bytes arrive
    (nubis.services.spool): then ``seal`` holds what only the encrypted store understands, and
    :meth:`open` returns the decrypted plaintext.
    """

    @property
    def path(self) -> Path: ...

    @property
    def size(self) -> int: ...

    @property
    def seal(self) -> object | None: ...

    def open(self) -> BinaryIO:
        """The plaintext, seekable."""


@dataclass(frozen=True)
class PlainFile:
    """A plaintext local file (:class:`LocalFile` without a seal)."""

    path: Path
    size: int
    seal: None = None

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


class BlobNotFound(KeyError):
    """No blob under that key."""


class BlobExists(FileExistsError):
    """A create-only put found a blob already under that key."""


class BlobStore(Protocol):
    capabilities: BlobCapabilities

    def new_key(self) -> str:
        """A fresh, opaque, collision-free key."""

    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        """Durably store the local file ``source`` under ``key`` (create only); the file is
        consumed (moved or deleted). Returns only once the bytes would survive a crash."""

    def read(
        self, key: str, start: int = 0, length: int | None = None, *, context: BlobContext
    ) -> bytes:
        """Bytes ``[start, start + length)`` of the blob (to its end when ``length`` is None)."""

    def iter_chunks(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = 1 << 20,
        *,
        context: BlobContext,
    ) -> Iterator[bytes]:
        """Stream a byte range of the blob in chunks. A missing blob or a key failure raises
        here, before the first chunk; a damaged one may raise while streaming."""

    def open(self, key: str, *, context: BlobContext) -> BinaryIO:
        """A seekable binary file object over the blob's bytes, for decoders (pydicom) that
        read where they like; the caller closes it."""

    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing key is not an error."""

    def list(self) -> Iterator[BlobInfo]:
        """Every blob in the store (reaper, verification)."""
