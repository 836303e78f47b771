"""Storage tiers of the S3 store kept in buckets of their own.

A tier may name another bucket (and key prefix) of the same S3 service, optionally with a
storage class: ``cold=s3://nubis-cold/prefix``,
``archive=s3://nubis-archive/prefix?storage_class=GLACIER`` (the archive bucket may have its own
lifecycle policy, object lock or replication). Tiers that are storage classes live in the
``blobs`` store's own bucket, as without this wrapper; the first tier always does, so new
objects are written there as before. Every bucket is reached with the ``blobs`` store's
endpoint, credentials, settings and connection pool (:meth:`S3BlobStore.at`).

In the spirit of the folder tiers (nubis.blobs.folder_tiers):

- A blob moves by a server-side copy into the target bucket (CopyObject, or part by part above
  5 GiB), a HEAD that checks the copy holds as many bytes as the source, and only then a delete
  of the source: at every moment at least one copy exists. A move cut short leaves two copies,
  which the next move of that blob resolves. The key never changes, nor the index row naming it.
- Reads look in each bucket in turn, the ``blobs`` bucket first, and look again once if a move
  ran between two looks; a file from :meth:`open` looks again when it reads on, so a large
  object read while it moves keeps reading. A blob in the n-th bucket costs n - 1 extra
  round trips (404s) to find: the store is not told which tier the index says.
- A delete removes the key from every bucket; :meth:`list` merges every bucket's listing (each
  is in key order), so the reaper sees every blob once, orphans in a tier bucket included.

An object in an archive class answers reads with RestoreRequired as in the ``blobs`` bucket, and
:meth:`restore` asks for a restore wherever the blob is.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

from nubis.blobs.s3 import S3BlobStore, _ObjectFile
from nubis.errors import StorageUnavailable
from nubis.ports.blobs import BlobContext, BlobExists, BlobInfo, BlobNotFound, BlobStore, LocalFile
from nubis.tiers.rules import ARCHIVE_CLASSES, Tiers

__all__ = ["BucketTierStore", "with_bucket_tiers"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def with_bucket_tiers(store: BlobStore, tiers: Tiers) -> BlobStore:
    """``store`` with its tiers that name buckets of their own; as it is when none does."""
    if not any(t.bucket for t in tiers.all):
        return store
    if not isinstance(store, S3BlobStore):
        named = ", ".join(t.name for t in tiers.all if t.bucket)
        raise ValueError(f"tier(s) {named} name a bucket, which needs an S3 blob store")
    return BucketTierStore(store, tiers)


@dataclass(frozen=True)
class _Place:
    """Where a tier keeps its objects: a bucket (and prefix), and their storage class (None:
    whichever the bucket gives)."""

    store: S3BlobStore
    storage_class: str | None


class BucketTierStore:
    """A :class:`~nubis.ports.blobs.BlobStore` over the ``blobs`` bucket and the tier buckets.

    Parameters
    ----------
    main : S3BlobStore
        The ``blobs`` store: new blobs are written here, and tiers that are storage classes
        live here.
    tiers : Tiers
        Every tier; those whose target is an ``s3://`` URL live in that bucket and prefix.
    """

    def __init__(self, main: S3BlobStore, tiers: Tiers) -> None:
        self.main = main
        self.capabilities = main.capabilities
        # One store per distinct bucket and prefix, the blobs bucket first: the order reads
        # look in, as hot blobs are read most.
        self.buckets: list[S3BlobStore] = [main]
        self.tiers: dict[str, _Place] = {}
        for tier in tiers.all:
            bucket = tier.bucket
            if bucket is None:
                self.tiers[tier.name] = _Place(main, tier.storage_class)
                continue
            store = self._bucket(bucket.bucket, bucket.prefix)
            self.tiers[tier.name] = _Place(store, bucket.storage_class)

    def _bucket(self, bucket: str, prefix: str) -> S3BlobStore:
        candidate = self.main.at(bucket, prefix)
        for store in self.buckets:
            if (store.bucket, store.prefix) == (candidate.bucket, candidate.prefix):
                return store
        self.buckets.append(candidate)
        return candidate

    def __repr__(self) -> str:
        places = ", ".join(
            f"{name}=s3://{p.store.bucket}/{p.store.prefix} {p.storage_class or '(any class)'}"
            for name, p in self.tiers.items()
        )
        return f"BucketTierStore({places})"

    def _first(self, key: str, use: Callable[[S3BlobStore], T]) -> T:
        # A move copies into its target before deleting the source, so a blob missing from
        # every bucket in one pass was being moved past us between two looks: look again.
        for _ in range(2):
            for store in self.buckets:
                try:
                    return use(store)
                except BlobNotFound:
                    continue
        raise BlobNotFound(key)

    def _holders(self, key: str) -> list[tuple[S3BlobStore, dict[str, Any]]]:
        """Every bucket holding the blob, with its HEAD answer, in the order reads look."""
        return [(s, head) for s in self.buckets if (head := _look(s, key)) is not None]

    # ------------------------------------------------------------------ BlobStore
    def new_key(self) -> str:
        return self.main.new_key()

    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        # Create-only across buckets: a key moved to a tier bucket is still taken. The blobs
        # bucket's PUT is create-only itself; the tier buckets are looked at before it and
        # again after it, so a put racing a move of the same key loses either way. Keys are
        # random (new_key): this guards against misuse, for two HEADs per tier bucket.
        if self._elsewhere(key):
            raise BlobExists(key)
        self.main.put_file(key, source, context=context)
        if self._elsewhere(key):
            self.main.delete(key)
            raise BlobExists(key)

    def _elsewhere(self, key: str) -> bool:
        return any(_look(store, key) is not None for store in self.buckets[1:])

    def read(
        self, key: str, start: int = 0, length: int | None = None, *, context: BlobContext
    ) -> bytes:
        return self._first(key, lambda s: s.read(key, start, length, context=context))

    def iter_chunks(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = 1 << 20,
        *,
        context: BlobContext,
    ) -> Iterator[bytes]:
        return self._first(
            key, lambda s: s.iter_chunks(key, start, length, chunk_size, context=context)
        )

    def open(self, key: str, *, context: BlobContext) -> BinaryIO:
        def refill(key: str, start: int, length: int) -> bytes:
            return self.read(key, start, length, context=context)

        return self._first(key, lambda s: _ObjectFile(s, key, refill))  # type: ignore[return-value]

    def delete(self, key: str) -> None:
        for store in self.buckets:
            store.delete(key)

    def list(self) -> Iterator[BlobInfo]:
        """Every blob once, even one caught in two buckets by a move: S3 lists keys in order,
        so merging the listings brings the copies of a key together."""
        previous = None
        for info in heapq.merge(*(s.list() for s in self.buckets), key=lambda i: i.key):
            if info.key != previous:
                yield info
            previous = info.key

    # ------------------------------------------------------------------ tiers
    def tier_of(self, key: str) -> str | None:
        """The tier the blob is in by its bucket and storage class (the first bucket holding
        it, mid-move); None if no bucket holds it or no tier matches its class."""
        holders = self._holders(key)
        if not holders:
            return None
        store, head = holders[0]
        found = _storage_class(head)
        for name, place in self.tiers.items():
            if place.store is store and place.storage_class in (None, found):
                return name
        return None

    def move(self, key: str, tier: str) -> None:
        """Put the blob in ``tier``'s bucket and class; BlobNotFound if no bucket holds it,
        RestoreRequired if it must be copied out of an archive class first."""
        place = self.tiers[tier]
        holders = self._holders(key)
        if not holders:
            raise BlobNotFound(key)
        there = next((head for store, head in holders if store is place.store), None)
        elsewhere = [(store, head) for store, head in holders if store is not place.store]
        if elsewhere:
            source, head = elsewhere[0]
            size = int(head["ContentLength"])
            if there is None:
                place.store.copy_from(source, key, place.storage_class, size)
                there = _look(place.store, key)
            if there is None or int(there["ContentLength"]) != size:
                # Copies are whole or absent: this is no copy of ours (or none arrived).
                log.error(
                    "blob %s: %d bytes in %r, %s in %r; the source is kept",
                    key, size, source, there and there["ContentLength"], place.store,
                )  # fmt: skip
                raise StorageUnavailable(f"blob {key}: its copy into tier {tier} is not whole")
            # Only now, with the copy checked, may the source go.
            for store, _ in elsewhere:
                store.delete(key)
        assert there is not None  # the blob was here already, or its copy is checked
        if place.storage_class and _storage_class(there) != place.storage_class:
            place.store.set_tier(key, place.storage_class)

    def restore(self, key: str) -> bool:
        """Ask for a readable copy of the archived blob wherever it is; True if one was
        requested now."""
        holders = self._holders(key)
        # A store refuses a restore of an object that is not archived; a class that archives
        # without saying so in its name (Intelligent-Tiering's archive tiers) is asked in the
        # first bucket holding the blob, as a store without tier buckets would be.
        archived = [s for s, head in holders if _storage_class(head) in ARCHIVE_CLASSES]
        requested = False
        for store in archived or [s for s, _ in holders[:1]]:
            requested = store.restore(key) or requested
        return requested


def _look(store: S3BlobStore, key: str) -> dict[str, Any] | None:
    """The HEAD answer for the blob in ``store``; None when it is not there."""
    try:
        return store._head(key)
    except BlobNotFound:
        return None


def _storage_class(head: dict[str, Any]) -> str:
    # S3 names no class for STANDARD objects.
    return str(head.get("StorageClass") or "STANDARD")
