"""Reads of an edge node's evicted objects, from the cloud archive (docs/edge.md).

:class:`ReadThroughStore` is the blob store the edge's retrieve service reads through (the
archive's own store is unchanged: stores, deletes, verification and the jobs see only what
is local). A blob that is here is read here; one that is not (evicted, docs/edge.md) is
fetched from the cloud as the instance its BlobContext names, checked against the SHA-256
the index kept, and read from that local copy, which is dropped when the read ends: a read
of an evicted object costs one WADO-RS request, and it is not cached again (its study would
be evicted again by the same rules). Every read still goes through RetrieveService, so it
is authorized and audited as any read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from nubis.edge.cloud import CloudArchive
from nubis.ports.blobs import BlobContext, BlobInfo, BlobNotFound, BlobStore, LocalFile

__all__ = ["ReadThroughStore"]


class ReadThroughStore:
    def __init__(self, local: BlobStore, cloud: CloudArchive) -> None:
        self.local = local
        self.cloud = cloud
        self.capabilities = local.capabilities

    def new_key(self) -> str:
        return self.local.new_key()

    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        self.local.put_file(key, source, context=context)

    def read(
        self, key: str, start: int = 0, length: int | None = None, *, context: BlobContext
    ) -> bytes:
        try:
            return self.local.read(key, start, length, context=context)
        except BlobNotFound:
            with self.cloud.fetch(context) as copy:
                copy.seek(start)
                return copy.read(-1 if length is None else length)

    def iter_chunks(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = 1 << 20,
        *,
        context: BlobContext,
    ) -> Iterator[bytes]:
        try:
            return self.local.iter_chunks(key, start, length, chunk_size, context=context)
        except BlobNotFound:
            # Fetched and checked here, so a failure comes before the first chunk.
            return _chunks(self.cloud.fetch(context), start, length, chunk_size)

    def open(self, key: str, *, context: BlobContext) -> BinaryIO:
        try:
            return self.local.open(key, context=context)
        except BlobNotFound:
            return self.cloud.fetch(context)

    def delete(self, key: str) -> None:
        self.local.delete(key)

    def list(self) -> Iterator[BlobInfo]:
        return self.local.list()


def _chunks(copy: BinaryIO, start: int, length: int | None, size: int) -> Iterator[bytes]:
    with copy:
        copy.seek(start)
        left = length
        while left is None or left > 0:
            chunk = copy.read(size if left is None else min(size, left))
            if not chunk:
                return
            if left is not None:
                left -= len(chunk)
            yield chunk
