"""Would fsyncing a stored blob while the index commits save a wait on a serial store?

Usage:  .venv/bin/python bench/fsync_overlap.py [--rounds N] [--dir PATH]

A serial store (STOW-RS 1 x 1, C-STORE on one association) waits for two fsyncs one after the
other: the blob (file and folder), then the index row (SQLite WAL, synchronous=FULL). This
times that sequence against the same two fsyncs started together, on the file system of
``--dir`` (the data folder's, by default the current one), as nubis does them: a new 0.5 MB
file fsynced and linked with its folder fsynced, and one small row committed. Run it where
the archive will live: the answer depends on the file system and the disk.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

_BLOB = os.urandom(512 * 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        root = Path(scratch)
        db = sqlite3.connect(root / "index.sqlite", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE rows (key TEXT, metadata BLOB)")

        def blob() -> None:
            path = root / secrets.token_hex(16)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, _BLOB)
                os.fsync(fd)
            finally:
                os.close(fd)
            folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)

        def row() -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO rows VALUES (?, ?)", ("key", b"m" * 2000))
            db.execute("COMMIT")

        def serial() -> None:
            blob()
            row()

        def together() -> None:
            syncing = threading.Thread(target=blob)
            syncing.start()
            row()
            syncing.join()

        plans: list[tuple[str, Callable[[], None]]] = [("serial", serial), ("together", together)]
        times: dict[str, list[float]] = {name: [] for name, _ in plans}
        for i in range(args.rounds):
            for name, plan in plans if i % 2 else reversed(plans):
                start = time.perf_counter()
                plan()
                times[name].append((time.perf_counter() - start) * 1000)
        for name, values in times.items():
            values.sort()
            print(
                f"{name:9} p50 {statistics.median(values):6.2f} ms   "
                f"p90 {values[int(len(values) * 0.9)]:6.2f} ms"
            )


if __name__ == "__main__":
    main()
