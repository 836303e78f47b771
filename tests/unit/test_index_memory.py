"""The SQLite index's memory stays bounded while the index grows (issue 12).

A migration's resident memory grew with every instance it stored: the writer connection kept
each page it had changed in its page cache until the cache's cap (64 MiB), most of them pages
of append-only tables no write reads again. SQLite counts what it allocates
(``sqlite3_status64(SQLITE_STATUS_MEMORY_USED)``), so the bound is checked on that count
rather than on the process's RSS, which other threads and the allocator blur.
"""

from __future__ import annotations

import _sqlite3
import ctypes
from pathlib import Path

from nubis.index.database import Index
from nubis.migrate.ledger import Ledger
from nubis.migrate.source import SourceInstance, SourceStudy

_SQLITE_STATUS_MEMORY_USED = 0
_MB = 1 << 20


def _sqlite_memory_used() -> int:
    """Bytes SQLite holds in this process (the library Python's sqlite3 module is linked to)."""
    library = ctypes.CDLL(_sqlite3.__file__)
    current, highest = ctypes.c_int64(), ctypes.c_int64()
    status = library.sqlite3_status64(
        _SQLITE_STATUS_MEMORY_USED, ctypes.byref(current), ctypes.byref(highest), 0
    )
    assert status == 0
    return current.value


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def test_the_index_writers_memory_does_not_grow_with_the_index(tmp_path: Path) -> None:
    """A migration's ledger written study by study, one transaction each, as the job lists
    them: the index grows by 40 MB, SQLite's memory by no more than its bounded caches."""
    path = tmp_path / "index.sqlite"
    index = Index(f"sqlite:///{path}", durable=False)
    index.migrate()
    index.open()
    try:
        ledger = Ledger(index, "memory", "default")
        before, grown_from = _sqlite_memory_used(), _size(path)
        study = 0
        while _size(path) - grown_from < 40 * _MB:
            uid = f"1.2.826.0.1.3680043.8.498.{study:038d}"
            series = uid + ".1"
            ledger.begin_study(
                SourceStudy(uid), [SourceInstance(f"{series}.{i:05d}", series) for i in range(2000)]
            )
            study += 1
        used = _sqlite_memory_used() - before
    finally:
        index.close()
    # Cache used at all (so a library counting nothing would fail), and bounded: the writer's
    # 8 MiB and the pages' headers; the readers' caches are emptied at each commit.
    assert 1 * _MB < used < 16 * _MB, f"SQLite holds {used / _MB:.1f} MB more ({study} studies)"
