"""Storage tiers of the folder store: one folder per tier.

The first tier is the blob folder itself, where new blobs go; every other tier is a folder of
its own (``tiers`` setting: an absolute path, e.g. a slower disk or a NAS mount, or else a
folder of that name under ``blobs/tiers/``), with the same ``ab/cd/key`` fan-out. A blob moves
by ``link`` into the target folder and ``unlink`` from the source (a copy first when the
folders are on different filesystems), so at every moment at least one copy exists: reads,
which look in every tier folder in turn and look again once if a move ran between two looks,
always find it. A move cut short by a crash leaves two copies, which the next move of that blob
resolves. The index records which tier each blob is in (nubis.tiers); this store does not
need it to read.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, TypeVar

from nubis.blobs.filesystem import FileBlobStore
from nubis.ports.blobs import BlobContext, BlobExists, BlobInfo, BlobNotFound, BlobStore, LocalFile
from nubis.tiers.rules import Tiers

__all__ = ["FolderTierStore", "tier_folder", "with_folder_tiers"]

T = TypeVar("T")


def tier_folder(root: Path, target: str) -> Path:
    """Where a tier other than the first keeps its blobs."""
    path = Path(target)
    return path if path.is_absolute() else root / "tiers" / target


def with_folder_tiers(store: BlobStore, tiers: Tiers) -> BlobStore:
    """``store`` with a folder per tier when it is a folder store and there is more than one
    tier; any other store as it is (S3 tiers are storage classes or buckets: bucket_tiers)."""
    if not isinstance(store, FileBlobStore) or len(tiers.all) < 2:
        return store
    folders = [(tiers.default.name, store.root)]
    folders += [(t.name, tier_folder(store.root, t.target)) for t in tiers.all[1:]]
    return FolderTierStore(store, folders)


class FolderTierStore:
    """A :class:`~nubis.ports.blobs.BlobStore` over one folder store per tier.

    Parameters
    ----------
    hot : FileBlobStore
        The first tier's store: new blobs are written here.
    folders : sequence of (tier name, folder)
        Every tier in order, the first being ``hot``'s own folder. Other folders are created
        on the first move into them, never just by being configured (an unmounted disk must
        not silently become a folder on the root filesystem before anything needs it).
    """

    def __init__(self, hot: FileBlobStore, folders: Sequence[tuple[str, Path]]) -> None:
        self.hot = hot
        self.capabilities = hot.capabilities
        self.folders = dict(folders)
        self._order = [name for name, _ in folders]
        self._stores: dict[str, FileBlobStore] = {self._order[0]: hot}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FolderTierStore({', '.join(f'{n}={p}' for n, p in self.folders.items())})"

    def _store(self, name: str, *, create: bool = False) -> FileBlobStore | None:
        with self._lock:
            store = self._stores.get(name)
            if store is None:
                folder = self.folders[name]
                if not create and not folder.is_dir():
                    return None
                store = FileBlobStore(folder, durable=self.hot.durable)
                self._stores[name] = store
            return store

    def _present(self) -> Iterator[tuple[str, FileBlobStore]]:
        for name in self._order:
            store = self._store(name)
            if store is not None:
                yield name, store

    def _first(self, key: str, use: Callable[[FileBlobStore], T]) -> T:
        # A move links into its target before unlinking the source, so a blob missing from
        # every folder in one pass was being moved past us between two looks: look again.
        for _ in range(2):
            for _name, store in self._present():
                try:
                    return use(store)
                except BlobNotFound:
                    continue
        raise BlobNotFound(key)

    # ------------------------------------------------------------------ BlobStore
    def new_key(self) -> str:
        return self.hot.new_key()

    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        # Create-only across tiers: a key moved to another folder is still taken. Looked at
        # before the link into the first folder and again after it, so a put racing a move of
        # the same key loses either way. Keys are random (new_key): this guards against
        # misuse, for a stat or two per tier folder.
        if self._elsewhere(key):
            raise BlobExists(key)
        self.hot.put_file(key, source, context=context)
        if self._elsewhere(key):
            self.hot.delete(key)
            raise BlobExists(key)

    def _elsewhere(self, key: str) -> bool:
        return any(
            store is not self.hot and store._path(key).exists() for _, store in self._present()
        )

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
        return self._first(key, lambda s: s.open(key, context=context))

    def delete(self, key: str) -> None:
        for _name, store in self._present():
            store.delete(key)

    def list(self) -> Iterator[BlobInfo]:
        """Every blob once, even one caught between two folders by a move."""
        earlier: list[FileBlobStore] = []
        for _name, store in self._present():
            for info in store.list():
                if not any(e._path(info.key).exists() for e in earlier):
                    yield info
            earlier.append(store)

    # ------------------------------------------------------------------ tiers
    def restore(self, key: str) -> bool:
        return False  # every folder is online

    def tier_of(self, key: str) -> str | None:
        """The tier whose folder holds the blob (the first one, mid-move); None if none."""
        for name, store in self._present():
            if store._path(key).exists():
                return name
        return None

    def move(self, key: str, tier: str) -> None:
        """Move the blob into ``tier``'s folder; BlobNotFound if it is in none."""
        target = self._store(tier, create=True)
        assert target is not None
        destination = target._path(key)
        for name, store in self._present():
            source = store._path(key)
            if name == tier or source == destination or not source.exists():
                continue
            if destination.exists():
                store.delete(key)  # an earlier move stopped between link and unlink
                return
            try:
                # fsync, link (create-only), unlink the source, fsync the folder: the same
                # steps, and durability, as a store adopting a spool file.
                target._adopt(key, source)
            except BlobExists:
                store.delete(key)  # a concurrent move of the same blob got there first
            except FileNotFoundError:
                continue  # moved or deleted by someone else since we looked
            return
        if not destination.exists():
            raise BlobNotFound(key)
