"""Spool files: where an incoming object lands before it is inspected and stored.

The spool folder lives beside the blobs so the file store can adopt a spooled file by a rename
(one write of the bytes, no copy). Size and SHA-256 are computed while the bytes stream in, so
the digest costs no second read.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType


@dataclass(frozen=True)
class SpooledFile:
    path: Path
    size: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class SpoolWriter:
    """Write-only spool file; ``finish()`` returns the SpooledFile, ``abort()`` removes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "xb")  # noqa: SIM115 - owned by this object
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, chunk: bytes | memoryview) -> None:
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def finish(self) -> SpooledFile:
        self._file.close()
        return SpooledFile(self.path, self._size, self._hash.hexdigest())

    def abort(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def clear(self) -> int:
        """Remove leftovers of requests that died with the process; returns how many."""
        removed = 0
        for entry in os.scandir(self.folder):
            if entry.is_file():
                os.unlink(entry.path)
                removed += 1
        return removed

    def writer(self) -> SpoolWriter:
        return SpoolWriter(self.folder / f"in-{secrets.token_hex(12)}")

    def from_file(self, source: Path) -> SpooledFile:
        """Copy a local file into the spool (CLI import, tests)."""
        with self.writer() as writer, open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                writer.write(chunk)
            return writer.finish()
