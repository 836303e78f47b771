"""Spool files: where an incoming object lands before it is inspected and stored.

The spool folder lives beside the blobs so the file store can adopt a spooled file by a rename
(one write of the bytes, no copy). Size and SHA-256 are computed while the bytes stream in, so
the digest costs no second read.

With encryption at rest the spool is *sealed*: each file is encrypted as it is written, in the
final blob format (nubis.crypto.envelope), under a fresh data key that exists only in this
process's memory. Room is left at the start for the header, which the encrypted blob store
writes once the object's identity is known; it then adopts the file as it does a plain one. So
plaintext never reaches the disk, and encryption costs no extra write or copy. A spool file
left by a crash is unreadable ciphertext (its key died with the process) and is cleared at the
next start. Limits: the plaintext does pass through process memory (the chunk being written,
pydicom's parse at inspection), and may reach swap unless swap is encrypted or off.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from nubis.crypto.envelope import Seal, SegmentKey, SegmentReader, SegmentWriter, open_plain
from nubis.services.disk_floor import DiskFloor


@dataclass(frozen=True)
class SpooledFile:
    path: Path
    size: int
    sha256: str
    seal: Seal | None = None

    def open(self) -> BinaryIO:
        """The spooled plaintext, seekable (decrypted on the fly when sealed)."""
        raw = open(self.path, "rb")  # noqa: SIM115 - owned by the returned reader
        if self.seal is None:
            return raw
        reader = SegmentReader(
            raw, self.seal.key, body_offset=self.seal.body_offset, size=self.size, name="<spool>"
        )
        return open_plain(reader)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class SpoolWriter:
    """Write-only spool file; ``finish()`` returns the SpooledFile, ``abort()`` removes it."""

    def __init__(self, path: Path, *, sealed: bool = False) -> None:
        self.path = path
        self._file = open(path, "xb")  # noqa: SIM115 - owned by this object
        self._hash = hashlib.sha256()
        self._size = 0
        self._seal: Seal | None = None
        self._cipher: SegmentWriter | None = None
        if sealed:
            self._seal = Seal(SegmentKey.new())
            self._file.write(bytes(self._seal.body_offset))
            self._cipher = SegmentWriter(self._seal.key, self._file.write)

    def write(self, chunk: bytes | memoryview) -> None:
        if self._cipher is not None:
            self._cipher.write(chunk)
        else:
            self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def finish(self) -> SpooledFile:
        if self._cipher is not None:
            self._cipher.finish()
        self._file.close()
        return SpooledFile(self.path, self._size, self._hash.hexdigest(), self._seal)

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
    """The spool folder; ``sealed`` encrypts every spool file (see the module docstring).
    With a ``floor``, a new spool file is refused (InsufficientStorage) while the disk is
    below it (nubis.services.disk_floor)."""

    def __init__(
        self, folder: Path, *, sealed: bool = False, floor: DiskFloor | None = None
    ) -> None:
        self.folder = folder
        self.sealed = sealed
        self.floor = floor
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
        if self.floor is not None:
            self.floor.check()
        return SpoolWriter(self.folder / f"in-{secrets.token_hex(12)}", sealed=self.sealed)

    def from_file(self, source: Path) -> SpooledFile:
        """Copy a local file into the spool (CLI import, tests)."""
        with self.writer() as writer, open(source, "rb") as f:
            while chunk := f.read(1 << 20):
                writer.write(chunk)
            return writer.finish()
