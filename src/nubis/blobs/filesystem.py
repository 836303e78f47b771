"""Blobs as files in a local folder, fanned out by key prefix (``ab/cd/abcd...``).

Durability follows the classic recipe: the spooled file is fsynced, renamed into place with
``os.link`` (which fails if the key exists, giving create-only semantics atomically), and the
parent folder is fsynced so the new directory entry survives a power loss.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nubis.ports.blobs import (
    BlobCapabilities,
    BlobContext,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    LocalFile,
)

_KEY = re.compile(r"[0-9a-f]{32}")


class FileBlobStore:
    capabilities = BlobCapabilities(adopts_local_files=True, range_reads=True)

    def __init__(self, root: Path, *, durable: bool = True) -> None:
        self.root = root
        self._root_text = str(root)
        self.durable = durable
        root.mkdir(parents=True, exist_ok=True)

    def new_key(self) -> str:
        return secrets.token_hex(16)

    def _path(self, key: str) -> Path:
        # Keys come from new_key() or the index; refuse anything else so no key escapes the root.
        # (Called several times per store and read: one regular expression and one Path, not
        # a generator per character and three Path joins.)
        if _KEY.fullmatch(key) is None:
            raise BlobNotFound(key)
        return Path(f"{self._root_text}/{key[:2]}/{key[2:4]}/{key}")

    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        if source.seal is not None:
            # A sealed spool file is ciphertext under a key only the encrypted store holds;
            # storing it here would keep bytes nobody can read (a wiring error, never data).
            raise ValueError("a sealed spool file needs the encrypted blob store")
        self._adopt(key, source.path)

    def _adopt(self, key: str, source: Path) -> None:
        """Store the local file ``source`` as is under ``key`` (create only), consuming it."""
        target = self._path(key)
        if self.durable:
            fd = os.open(source, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            self._link(source, target)
        except FileExistsError:
            raise BlobExists(key) from None
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Spool on another filesystem: copy through a temp file, then link into place.
            self._copy_in(source, target)
        os.unlink(source)
        if self.durable:
            _fsync_dir(target.parent)

    @staticmethod
    def _link(source: Path, target: Path) -> None:
        # Fan-out folders exist after the first few hundred stores: try first, create on demand
        # (a mkdir per store costs more than the link itself).
        try:
            os.link(source, target)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)

    def _copy_in(self, source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(target.name + ".tmp-" + secrets.token_hex(4))
        with open(source, "rb") as src, open(temp, "xb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
            dst.flush()
            if self.durable:
                os.fsync(dst.fileno())
        try:
            self._link(temp, target)
        except FileExistsError:
            raise BlobExists(target.name) from None
        finally:
            os.unlink(temp)

    def read(
        self, key: str, start: int = 0, length: int | None = None, *, context: BlobContext
    ) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                if length is None:
                    f.seek(start)
                    return f.read()
                return os.pread(f.fileno(), length, start)
        except FileNotFoundError:
            raise BlobNotFound(key) from None

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
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator below
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        return _chunks(f, start, length, chunk_size)

    def open(self, key: str, *, context: BlobContext) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError, BlobNotFound):
            os.unlink(self._path(key))

    def list(self) -> Iterator[BlobInfo]:
        for first in sorted(self.root.iterdir()):
            if not first.is_dir() or len(first.name) != 2:
                continue
            for second in sorted(first.iterdir()):
                for entry in os.scandir(second):
                    if len(entry.name) != 32:
                        continue  # a .tmp- file of a copy in progress
                    st = entry.stat()
                    yield BlobInfo(entry.name, st.st_size, st.st_mtime)


def _chunks(f: BinaryIO, start: int, length: int | None, chunk_size: int) -> Iterator[bytes]:
    with f:
        f.seek(start)
        remaining = length
        while remaining is None or remaining > 0:
            want = chunk_size if remaining is None else min(chunk_size, remaining)
            chunk = f.read(want)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
