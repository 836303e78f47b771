"""The blob store port: where the bytes of stored objects live.

A blob store is not a filesystem: it offers create-once puts, ranged reads, delete and list,
nothing else. Keys are opaque and chosen by the caller (the index owns them); a backend must
never derive meaning from a key. Implementations are synchronous: the services run in worker
threads (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class BlobCapabilities:
    # The store can take ownership of a spooled local file without copying it (same filesystem).
    adopts_local_files: bool
    range_reads: bool


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    modified_at: float


class BlobNotFound(KeyError):
    """No blob under that key."""


class BlobExists(FileExistsError):
    """A create-only put found a blob already under that key."""


class BlobStore(Protocol):
    capabilities: BlobCapabilities

    def new_key(self) -> str:
        """A fresh, opaque, collision-free key."""

    def put_file(self, key: str, source: Path) -> None:
        """Durably store the local file ``source`` under ``key`` (create only); ``source`` is
        consumed (moved or deleted). Returns only once the bytes would survive a crash."""

    def read(self, key: str, start: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[start, start + length)`` of the blob (to its end when ``length`` is None)."""

    def iter_chunks(
        self, key: str, start: int = 0, length: int | None = None, chunk_size: int = 1 << 20
    ) -> Iterator[bytes]:
        """Stream a byte range of the blob in chunks."""

    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob, for decoders that need a path; None if remote."""

    def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing key is not an error."""

    def list(self) -> Iterator[BlobInfo]:
        """Every blob in the store (reaper, verification)."""
