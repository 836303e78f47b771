"""The job-handler contract: what a handler is, and what it sees of its job.

A handler is a plain function of a :class:`JobContext` (``nubis.jobs.kinds``, the tier pass,
storage commitment reports, sends, re-wraps...). It reports progress, with a cursor to resume
from, through the context, and the context's ``check()`` raises when the job should stop:
cancelled by an operator (:class:`JobCancelled`), its lease taken over by another runner
(``LeaseLost``), or the runner stopping (:class:`JobStopped`: the job goes back to the queue
with its cursor). A handler that knows what should follow its failure raises
:class:`JobFailed`; one that must wait for a turn raises :class:`JobDeferred`. Handlers
depend on this contract, not on the runner (nubis.jobs.runner), which calls them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from nubis.jobs.store import Job, LeaseLost

__all__ = ["Handler", "JobCancelled", "JobContext", "JobDeferred", "JobFailed", "JobStopped"]


class JobStopped(Exception):
    """Raised by JobContext.check() when the runner is stopping: the job is put back."""


class JobCancelled(Exception):
    """Raised by JobContext.check() when an operator cancelled the job."""


class JobFailed(Exception):
    """Raised by a handler that decides what follows its failed attempt: another attempt in
    ``retry_in`` seconds (while ``max_attempts`` allows one), or none (``retry_in`` None): the
    job fails now. ``reason`` is what ``nubis jobs list`` shows."""

    def __init__(self, reason: str, *, retry_in: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


class JobDeferred(Exception):
    """Raised by a handler that cannot start yet through no fault of its job (every slot of a
    concurrency limit is taken): the job goes back to the queue, due in ``retry_in`` seconds,
    without counting an attempt."""

    def __init__(self, reason: str, *, retry_in: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_in = retry_in


class JobContext:
    """What a handler sees of its job: parameters, saved progress, and how to report."""

    def __init__(self, job: Job, stopping: threading.Event) -> None:
        self.job = job
        self.params: dict[str, Any] = job.params
        # A job taken over from a runner that died resumes where its last progress left it.
        self.cursor: Any = job.cursor
        self.done = job.progress_done if job.cursor is not None else 0
        self.total: int | None = job.progress_total
        self._stopping = stopping
        self._lock = threading.Lock()
        self._version = 0
        self.cancel_requested = job.cancel_requested
        self.lease_lost = False

    def progress(self, done: int, total: int | None = None, cursor: Any = None) -> None:
        """Record progress; ``cursor`` (JSON-able) is where a resumed run should start.

        Cheap (no I/O): the runner saves it within about a second. Also checks whether the
        job should stop (see :meth:`check`).
        """
        with self._lock:
            self.done = done
            if total is not None:
                self.total = total
            if cursor is not None:
                self.cursor = cursor
            self._version += 1
        self.check()

    def check(self) -> None:
        """Raise JobCancelled, LeaseLost or JobStopped if the job should stop now."""
        if self.cancel_requested:
            raise JobCancelled(f"job {self.job.id} was cancelled")
        if self.lease_lost:
            raise LeaseLost(f"job {self.job.id} was taken over by another runner")
        if self._stopping.is_set():
            raise JobStopped(f"job {self.job.id} interrupted: the runner is stopping")

    def snapshot(self) -> tuple[int, tuple[int, int | None, Any]]:
        with self._lock:
            return self._version, (self.done, self.total, self.cursor)


Handler = Callable[[JobContext], dict[str, Any] | None]
