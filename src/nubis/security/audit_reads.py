"""Read records appended off the request path, in batches, durably.

A write (store, delete, shred, export, a change of keys or accounts, a security alert) is
answered only once its record is committed, in the same transaction as the write where there
is one. A read (an instance, frame, rendering or metadata retrieved; a query) is answered once
its record is queued here: a background thread commits what is queued every
``interval_s`` (with the index's fsync when durable), or sooner when ``max_records`` wait.

What a crash can lose is bounded: the records of the reads answered in the last
``interval_s`` plus the commit then in flight, and never more than ``max_records`` of them
(a read waits, as before, for a commit when that many are pending). A clean stop commits
everything (:meth:`ReadRecordQueue.close`).

Fail closed, as for writes: when a commit fails, its records stay queued (they are retried
every ``interval_s``) and every read is refused with :class:`AuditUnavailable` (503, DIMSE
0xA700) until a commit succeeds again. A read answered in the window before the failure was
detected keeps its record, which is committed when the trail can be written again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from nubis import metrics
from nubis.errors import StorageUnavailable
from nubis.model.audit import AuditEvent, EventAction, EventID

log = logging.getLogger(__name__)


class AuditUnavailable(StorageUnavailable):
    """The access could not be audited, so it is refused (HTTP 503, DIMSE 0xA700)."""


# A read of patient data: these records may be committed after the answer (see module docs).
# Export (110106) is an R(ead) event too, but data leaving the archive is a write's record.
_READ_EVENTS = {
    EventID.INSTANCES_ACCESSED.code: {EventAction.READ},
    EventID.INSTANCES_TRANSFERRED.code: {EventAction.READ},
    EventID.BEGIN_TRANSFERRING.code: {EventAction.EXECUTE},
    EventID.QUERY.code: {EventAction.EXECUTE},
}


def is_read(event: AuditEvent) -> bool:
    """Whether ``event`` records a read (retrieval or query) that may be batched."""
    actions = _READ_EVENTS.get(event.event_id.code)
    return actions is not None and event.action in actions


class ReadRecordQueue:
    """Queued read records and the thread that commits them in batches, in order.

    ``commit`` appends a list of events to the chain in one transaction (raising
    when it cannot); only this queue's thread, or a caller of :meth:`flush`, calls it, one at
    a time, so queued records reach the chain in the order they were queued.
    """

    def __init__(
        self,
        commit: Callable[[list[AuditEvent]], object],
        *,
        interval_s: float,
        max_records: int,
    ) -> None:
        self._commit = commit
        self.interval_s = interval_s
        self.max_records = max(1, max_records)
        self._cond = threading.Condition()
        self._committing = threading.Lock()  # one batch at a time: chain order is queue order
        self._pending: list[AuditEvent] = []
        self._oldest = 0.0  # monotonic time the oldest pending record was queued
        self._in_flight = 0
        self._failure: BaseException | None = None
        self._urgent = False
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="nubis-audit-reads", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Commit everything queued, then stop the thread (a clean stop loses nothing)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        try:
            self.flush()
        except AuditUnavailable:
            log.error("%d read record(s) could not be committed at close", len(self._pending))

    # ------------------------------------------------------------------ queueing
    def add(self, records: Sequence[AuditEvent]) -> None:
        """Queue ``records``; raises :class:`AuditUnavailable` while the trail cannot be
        written. Waits for a commit when ``max_records`` are queued or being committed."""
        with self._cond:
            while True:
                if self._failure is not None:
                    raise _unavailable(self._failure)
                if len(self._pending) + self._in_flight < self.max_records or self._stopping:
                    break
                self._urgent = True
                self._cond.notify_all()
                self._cond.wait(1.0)
            if not self._pending:
                self._oldest = time.monotonic()
                self._cond.notify_all()  # the thread sleeps until there is something to commit
            self._pending.extend(records)
            if len(self._pending) >= self.max_records // 2:
                self._urgent = True
                self._cond.notify_all()
        if self._thread is None:  # not started (a short-lived CLI process): commit now
            self.flush()

    def flush(self) -> None:
        """Commit everything queued now; raises :class:`AuditUnavailable` if that fails."""
        with self._committing:
            with self._cond:
                batch, self._pending = self._pending, []
                self._in_flight = len(batch)
            if batch:
                self._commit_batch(batch)
            with self._cond:
                failure = self._failure
        if failure is not None:
            raise _unavailable(failure)

    @property
    def pending(self) -> int:
        """Records queued or being committed: what a crash now would lose."""
        with self._cond:
            return len(self._pending) + self._in_flight

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due():
                    if self._stopping:
                        return
                    wait = (
                        None
                        if not self._pending
                        else self._oldest + self._wait() - (time.monotonic())
                    )
                    self._cond.wait(wait if wait is None else max(wait, 0.0))
                self._urgent = False
            with self._committing:
                with self._cond:
                    batch, self._pending = self._pending, []
                    self._in_flight = len(batch)
                if batch:
                    self._commit_batch(batch)

    def _wait(self) -> float:
        # After a failure, retry no faster than once a second: the trail is down, not busy.
        return self.interval_s if self._failure is None else max(self.interval_s, 1.0)

    def _due(self) -> bool:
        if not self._pending:
            return False
        return self._urgent or self._stopping or time.monotonic() - self._oldest >= self._wait()

    def _commit_batch(self, batch: list[AuditEvent]) -> None:
        try:
            self._commit(batch)
        except Exception as exc:
            metrics.audit_append_failures.inc(len(batch))
            with self._cond:
                if self._failure is None:
                    log.error("audit records of %d read(s) could not be committed: %s",
                              len(batch), exc)  # fmt: skip
                self._failure = exc
                # Kept, in order, ahead of what was queued since: retried, never dropped.
                self._pending[:0] = batch
                self._oldest = time.monotonic()
                self._in_flight = 0
                self._cond.notify_all()
            return
        with self._cond:
            if self._failure is not None:
                log.warning("audit trail writable again: reads are served")
            self._failure = None
            self._in_flight = 0
            self._cond.notify_all()


def _unavailable(cause: BaseException) -> AuditUnavailable:
    exc = AuditUnavailable("the access could not be recorded in the audit trail, so it was refused")
    exc.__cause__ = cause
    return exc
