"""Where backups are kept: named files (``blobs/ab/cd/<key>``, ``index/<stamp>.sqlite``,
``manifests/<stamp>.json``) in a folder or under a prefix of an S3 bucket.

A target is written create-only: a name once written is never written again (blob keys are
random and written once, snapshots and manifests are named by their backup's stamp), so an
incremental backup cannot overwrite what an earlier backup holds. Files are staged in a local
folder first (the target's own for a folder, so a staged file is renamed into place) and put
whole. ``open_target`` takes a folder path or the S3 blob store's URL
(``s3://BUCKET/PREFIX?endpoint=...``, credentials from the AWS chain, nubis.blobs.s3).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from nubis.ports.blobs import BlobExists, BlobNotFound

__all__ = ["BackupTarget", "FolderTarget", "S3Target", "fsync_dir", "open_target"]


class BackupTarget(Protocol):
    @property
    def where(self) -> str:
        """The target as given (a folder's absolute path, or the S3 URL)."""
        ...

    def staging(self) -> Path:
        """A local folder for files on their way to the target."""
        ...

    def put(self, name: str, source: Path) -> None:
        """Move the staged file ``source`` to ``name``; a name that exists keeps its bytes."""
        ...

    def open(self, name: str) -> BinaryIO:
        """The bytes at ``name``; FileNotFoundError when there is none."""
        ...

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every name under ``prefix`` (a folder's, ending in /) with its size."""
        ...

    @contextmanager
    def local(self, name: str) -> Iterator[Path]:
        """``name`` as a local file for as long as the block runs."""
        ...


class FolderTarget:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def where(self) -> str:
        return str(self.root)

    def staging(self) -> Path:
        path = self.root / ".staging"  # on the folder's file system: a put is a rename
        path.mkdir(parents=True, exist_ok=True)
        return path

    def put(self, name: str, source: Path) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(source, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(source, target)
        fsync_dir(target.parent)

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def sizes(self, prefix: str) -> dict[str, int]:
        found: dict[str, int] = {}
        base = self.root / prefix
        if not base.is_dir():
            return found
        for folder, _, files in os.walk(base):
            for file in files:
                if not file.startswith("."):  # staged or partial files
                    path = Path(folder) / file
                    found[str(path.relative_to(self.root))] = path.stat().st_size
        return found

    @contextmanager
    def local(self, name: str) -> Iterator[Path]:
        path = self.root / name
        if not path.is_file():
            raise FileNotFoundError(name)
        yield path


class S3Target:
    """Names under the prefix of an S3 bucket, through the blob store's client (its session,
    retries, TLS settings, create-only PutObject and error translation)."""

    def __init__(self, url: str) -> None:
        from nubis.blobs.s3 import from_url

        self.url = url
        self.store = from_url(url)
        # Made when first needed (most uses only read), removed with the target.
        self._staging: tempfile.TemporaryDirectory[str] | None = None

    @property
    def where(self) -> str:
        return self.url

    def staging(self) -> Path:
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="nubis-backup-")
        return Path(self._staging.name)

    def put(self, name: str, source: Path) -> None:
        store = self.store
        try:
            with open(source, "rb") as f:
                store._call(  # the store's retries and error translation
                    "put",
                    name,
                    store.client.put_object,
                    Bucket=store.bucket,
                    Key=store.prefix + name,
                    Body=f,
                    ContentLength=source.stat().st_size,
                    ContentType="application/octet-stream",
                )
        except BlobExists:
            pass  # create-only: what an earlier run put there stays (verify checks its digest)
        finally:
            source.unlink(missing_ok=True)

    def open(self, name: str) -> BinaryIO:
        store = self.store
        try:
            answer = store._call(
                "get", name, store.client.get_object, Bucket=store.bucket, Key=store.prefix + name
            )
        except BlobNotFound:
            raise FileNotFoundError(name) from None
        body: BinaryIO = answer["Body"]
        return body

    def sizes(self, prefix: str) -> dict[str, int]:
        store = self.store
        found: dict[str, int] = {}
        args = {"Bucket": store.bucket, "Prefix": store.prefix + prefix, "MaxKeys": 1000}
        while True:
            page = store._call("list", prefix, store.client.list_objects_v2, **args)
            for item in page.get("Contents", ()):
                found[item["Key"][len(store.prefix) :]] = int(item["Size"])
            if not page.get("IsTruncated"):
                return found
            args["ContinuationToken"] = page["NextContinuationToken"]

    @contextmanager
    def local(self, name: str) -> Iterator[Path]:
        path = self.staging() / f"local-{Path(name).name}"
        try:
            with self.open(name) as body, open(path, "wb") as out:
                shutil.copyfileobj(body, out, 1 << 20)
            yield path
        finally:
            path.unlink(missing_ok=True)


def open_target(where: str) -> BackupTarget:
    """A folder path or an ``s3://`` URL."""
    if where.startswith("s3://"):
        return S3Target(where)
    return FolderTarget(Path(where))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
