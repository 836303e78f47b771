"""A counter every change to users or API keys bumps, shared by all processes of one host.

Worker processes answer API keys from a cache of their own (:mod:`nubis.security.users`); an
entry holds only while the counter is what it was before the entry's database lookup. The
counter is eight bytes in a file beside the SQLite index, mapped shared into every process
(server workers and the CLI alike), so a revocation that bumped it after its commit is seen by
the very next request in every worker, without a database trip, a thread hop or a time window.

A PostgreSQL index may be shared by archives on other hosts, which no local file would tell:
there is no counter then, and every request reads the key's row.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import threading
from pathlib import Path

_COUNTER = struct.Struct("<Q")


class CredentialGeneration:
    """The shared counter in ``path`` (created when missing).

    A counter file deleted or replaced while a process has it mapped would leave that process
    watching a file nobody bumps: every read checks (one ``stat``) that the path still names
    the mapped file, and maps the new one otherwise. Values read from another file never equal
    those of the file before it (each mapping has a number of its own in the high bits).
    """

    def __init__(self, path: Path, mode: int = 0o600) -> None:
        self.path = path
        self.mode = mode
        self._lock = threading.Lock()
        self._mappings = 0
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
        try:
            st = os.fstat(fd)
            if st.st_size < _COUNTER.size:
                with _locked(fd):
                    if os.fstat(fd).st_size < _COUNTER.size:
                        os.ftruncate(fd, _COUNTER.size)
            self._map = mmap.mmap(fd, _COUNTER.size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._identity = fd, (st.st_dev, st.st_ino)
        self._mappings += 1

    def _still_mapped(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def _remap(self) -> None:
        with self._lock:
            if self._still_mapped():
                return
            old_fd = self._fd
            self._open()
            # The old mapping closes when no reader holds it any more (mmap keeps its own fd).
            os.close(old_fd)

    @classmethod
    def for_index(cls, url: str) -> CredentialGeneration | None:
        """The counter of the SQLite index at ``url``; None for any other index (see the module
        docs). OSError when it cannot be opened: then this process must not change users or
        keys either, or other processes' caches would not learn of the change."""
        if not url.startswith("sqlite:///"):
            return None
        database = url.removeprefix("sqlite:///").split("?", 1)[0]
        if not database or database.startswith(":memory:"):
            return None
        try:
            # Whoever may write the index may bump the counter: the same permissions.
            mode = os.stat(database).st_mode & 0o666
        except OSError:
            mode = 0o600
        return cls(Path(database + "-credentials"), mode)

    def current(self) -> int | None:
        """The counter now; None when its file cannot be opened (then nothing may be cached)."""
        if not self._still_mapped():
            try:
                self._remap()
            except OSError:
                return None
        mapping = self._map
        value: int = _COUNTER.unpack_from(mapping)[0]
        return (self._mappings << 64) | value

    def bump(self) -> None:
        """Invalidate every process's cached credentials; call after the change committed."""
        if not self._still_mapped():
            self._remap()
        with self._lock, _locked(self._fd):
            value = _COUNTER.unpack_from(self._map)[0]
            _COUNTER.pack_into(self._map, 0, (value + 1) % (1 << 64))


class _locked:
    """An exclusive lock on the counter file, between processes bumping it at once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


__all__ = ["CredentialGeneration"]
