"""When each study was last read, for rules such as ``unread>30d -> cold``.

A read must not cost a write: :meth:`ReadTracker.touch` remembers in memory when this process
last recorded each study and records it again only after ``every_seconds`` (an hour by
default), and the records themselves are written by a background thread, many studies in one
transaction, a second or two later. The recorded time is therefore up to ``every_seconds``
older than the last read, which rules counted in days do not notice. A write that fails is
dropped and retried at the study's next read: the read itself has already been served.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Connection

from nubis.index.database import Index
from nubis.index.schema import study_lifecycle
from nubis.tiers.lifecycle import study_pk, upsert

__all__ = ["ReadTracker"]

log = logging.getLogger(__name__)

# Studies remembered per process before entries older than every_seconds are forgotten.
_REMEMBERED = 100_000


class ReadTracker:
    """Records ``study_lifecycle.last_read_at``, at most once per ``every_seconds`` per study
    and process."""

    def __init__(self, index: Index, *, every_seconds: float = 3600, flush_seconds: float = 2.0):
        self.index = index
        self.every_seconds = every_seconds
        self.flush_seconds = flush_seconds
        self._recorded: dict[tuple[str, str], float] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def touch(self, partition: str, study_uid: str) -> None:
        """A study was read now (called on the read path: no I/O here)."""
        study = (partition, study_uid)
        now = time.monotonic()
        with self._lock:
            last = self._recorded.get(study)
            if last is not None and now - last < self.every_seconds:
                return
            if len(self._recorded) >= _REMEMBERED:
                self._forget_old(now)
            self._recorded[study] = now
            self._pending[study] = time.time_ns() // 1_000_000
        self._wake.set()

    def _forget_old(self, now: float) -> None:
        old = [s for s, at in self._recorded.items() if now - at >= self.every_seconds]
        for study in old or list(self._recorded)[: _REMEMBERED // 2]:
            del self._recorded[study]

    def flush(self) -> int:
        """Write the pending records now; how many studies were written."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0

        def job(conn: Connection) -> int:
            written = 0
            for (partition, study_uid), at in pending.items():
                pk = study_pk(conn, partition, study_uid)
                if pk is not None:  # deleted since it was read
                    upsert(conn, study_lifecycle, "study_pk", {"study_pk": pk, "last_read_at": at})
                    written += 1
            return written

        try:
            return self.index.write(job)
        except Exception as exc:
            log.warning("recording the last read of %d study(ies) failed: %s", len(pending), exc)
            with self._lock:
                for study in pending:
                    self._recorded.pop(study, None)
            return 0

    # ------------------------------------------------------------------ background
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="nubis-reads", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Write what is pending, then stop (the index must still be open)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            self._wake.clear()
            # Gather the reads of the next moment into the same transaction.
            self._stopping.wait(self.flush_seconds)
            self.flush()
