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
import logging
import mmap
import os
import struct
from pathlib import Path

log = logging.getLogger("nubis.security")

_COUNTER = struct.Struct("<Q")


class CredentialGeneration:
    """The shared counter in ``path`` (created when missing)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size < _COUNTER.size:
                with _locked(self._fd):
                    if os.fstat(self._fd).st_size < _COUNTER.size:
                        os.ftruncate(self._fd, _COUNTER.size)
            self._map = mmap.mmap(self._fd, _COUNTER.size, mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def for_index(cls, url: str) -> CredentialGeneration | None:
        """The counter of the SQLite index at ``url``; None for any other index (see the module
        docs) or when the file cannot be made (the cache is then off, never wrong)."""
        if not url.startswith("sqlite:///"):
            return None
        database = url.removeprefix("sqlite:///").split("?", 1)[0]
        if not database or database.startswith(":memory:"):
            return None
        try:
            return cls(Path(database + "-credentials"))
        except OSError as exc:
            log.warning("API-key cache off: credential counter unavailable (%s)", exc.strerror)
            return None

    def current(self) -> int:
        value: int = _COUNTER.unpack_from(self._map)[0]
        return value

    def bump(self) -> None:
        """Invalidate every process's cached credentials; call after the change committed."""
        with _locked(self._fd):
            _COUNTER.pack_into(self._map, 0, (self.current() + 1) % (1 << 64))


class _locked:
    """An exclusive lock on the counter file, between processes bumping it at once."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


__all__ = ["CredentialGeneration"]
