"""Moving a blob between tiers, whatever the blob store.

- S3: the object is copied onto itself with the tier's StorageClass (``S3BlobStore.set_tier``;
  the key and bytes stay). Copying out of an archive class (GLACIER, DEEP_ARCHIVE) needs a
  restored copy first: the move raises RestoreRequired and :meth:`TierMover.restore` asks for
  one; a later run of the ``tier`` job completes the move.
- Folder store: tiers are folders (nubis.blobs.folder_tiers).
- S3 tiers in buckets of their own: the object is copied into the tier's bucket, checked and
  deleted from where it was (nubis.blobs.bucket_tiers).

The mover is found by walking wrapping stores (the encrypted store's ``inner``) down to one
that can move: encryption does not care where its ciphertext lives.
"""

from __future__ import annotations

from typing import Any, Protocol

from nubis.ports.blobs import BlobStore
from nubis.tiers.rules import Tier

__all__ = ["TierMover", "find_mover"]


class TierMover(Protocol):
    def move(self, key: str, tier: Tier) -> None:
        """Put the blob in ``tier``; raises BlobNotFound, RestoreRequired, StorageUnavailable."""

    def restore(self, key: str) -> bool:
        """Ask for a readable copy of an archived blob; True if a restore was requested now."""

    def where(self, key: str) -> str:
        """Where the store says the blob is: storage class or tier folder (for checks)."""


class _StorageClassMover:
    def __init__(self, store: Any) -> None:
        self.store = store

    def move(self, key: str, tier: Tier) -> None:
        self.store.set_tier(key, tier.target.upper())

    def restore(self, key: str) -> bool:
        return bool(self.store.restore(key))

    def where(self, key: str) -> str:
        return str(self.store.tier(key))


class _PlaceMover:
    """Stores that keep each tier in a place of its own (FolderTierStore, BucketTierStore)
    move by tier name and know which tier holds a blob."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def move(self, key: str, tier: Tier) -> None:
        self.store.move(key, tier.name)

    def restore(self, key: str) -> bool:
        return bool(self.store.restore(key))

    def where(self, key: str) -> str:
        return str(self.store.tier_of(key) or "")


def find_mover(blobs: BlobStore) -> TierMover | None:
    """The mover for ``blobs`` (looking through wrappers); None when it has no tiers."""
    store: Any = blobs
    while store is not None:
        if all(callable(getattr(store, name, None)) for name in ("move", "tier_of", "restore")):
            return _PlaceMover(store)
        if callable(getattr(store, "set_tier", None)) and callable(getattr(store, "restore", None)):
            return _StorageClassMover(store)
        store = getattr(store, "inner", None)
    return None
