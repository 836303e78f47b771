"""The free-disk floor: ingest is refused before the disk fills, so that what must keep working
(the index, the audit trail, reads) still has room (issue 9 item 7).

A full disk does not fail one store cleanly: SQLite cannot commit (every write, audit records
included, fails, and with the audit trail failing closed every read is refused too), and a spool
file dies half-written. So the archive stops *taking* objects while ``min_free_disk`` is still
free on every local file system it writes objects to: the spool folder, the blob folder of a
``file://`` store (S3 has no floor) and the folder of a SQLite index. Below the floor STOW-RS
answers 507 Insufficient Storage with failure reason 0xA700 and C-STORE 0xA700 Refused: Out of
Resources (PS3.4 Table B.2-1), and ``nubis import`` stops; queries, retrievals, the index's other
writes and the audit trail go on using the room the floor kept.

The check is a ``statvfs`` per file system (about a microsecond), made before an object is
spooled and again before it is stored: a large object may have taken the last room while it
arrived. Space taken by concurrent uploads between the two checks is what the floor is for.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nubis.errors import InsufficientStorage

log = logging.getLogger(__name__)

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*|%)\s*")
_LOG_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class FreeSpaceFloor:
    """At least ``bytes`` free, or ``percent`` of the file system's size; both 0: no floor."""

    bytes: int = 0
    percent: float = 0.0

    def needed(self, total: int) -> int:
        return self.bytes if not self.percent else int(total * self.percent / 100)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else f"{self.bytes} bytes"


def parse_floor(text: str) -> FreeSpaceFloor:
    """``"1GiB"``, ``"500MB"``, ``"1073741824"``, ``"5%"``, ``"0"``; ValueError otherwise."""
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if not match or (unit not in _UNITS and unit != "%"):
        raise ValueError(f"expected a size such as 1GiB, 500MB or 5%, got {text!r}")
    number = float(match.group(1))
    if unit == "%":
        if number > 100:
            raise ValueError(f"a percentage is at most 100, got {text!r}")
        return FreeSpaceFloor(percent=number)
    return FreeSpaceFloor(bytes=int(number * _UNITS[unit]))


class DiskFloor:
    """Refuses ingest while a watched file system has less free space than the floor."""

    def __init__(self, folders: Iterable[Path], floor: FreeSpaceFloor) -> None:
        self.floor = floor
        self.folders = _one_per_file_system(folders) if floor.bytes or floor.percent else []
        self._lock = threading.Lock()
        self._logged_at = -_LOG_EVERY_SECONDS

    def check(self) -> None:
        """InsufficientStorage (507 / 0xA700) if any watched file system is below the floor."""
        for folder in self.folders:
            stat = os.statvfs(folder)
            free, total = stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize
            needed = self.floor.needed(total)
            if free < needed:
                self._log(folder, free, needed)
                raise InsufficientStorage(
                    "the archive is refusing new objects: its storage is nearly full "
                    "(it keeps room for its index and audit trail); try again once an "
                    "administrator has made room"
                )

    def _log(self, folder: Path, free: int, needed: int) -> None:
        # Once a minute, not once per refused object.
        now = time.monotonic()
        with self._lock:
            if now - self._logged_at < _LOG_EVERY_SECONDS:
                return
            self._logged_at = now
        log.error(
            "refusing ingest: %s has %d MB free, below the floor of %d MB (min_free_disk = %s)",
            folder,
            free // 10**6,
            needed // 10**6,
            self.floor,
        )


def _one_per_file_system(folders: Iterable[Path]) -> list[Path]:
    """The nearest existing folder of each, one per file system (a blob folder may not exist
    until the first store)."""
    seen: dict[int, Path] = {}
    for folder in folders:
        path = folder.resolve()
        while not path.exists() and path != path.parent:
            path = path.parent
        seen.setdefault(os.stat(path).st_dev, path)
    return list(seen.values())


__all__ = ["DiskFloor", "FreeSpaceFloor", "parse_floor"]
