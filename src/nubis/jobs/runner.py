"""The job runner: a daemon thread in each ``nubis serve`` worker (or ``nubis jobs work``).

It claims one job at a time, runs its handler in its own thread and keeps a second thread
renewing the lease and saving progress about once a second, so ``nubis jobs list`` shows
progress while the handler runs and a handler that blocks in one long blob operation does not
lose its lease. When idle it polls with a backoff (0.5 s doubling up to ``poll_seconds``) and
is woken at once by a job queued in the same process. It also queues the periodic jobs of the
schedule (at most one per kind and period across every node, see JobStore.schedule), runs a
scheduled kind early when something in the process asks for it (``request``: a store that
added change feed entries asks for the webhooks job) and removes jobs that finished long ago.

Handlers are plain functions of a ``JobContext`` (the contract, nubis.jobs.context). When
its ``check()`` says the job should stop, the runner records why: cancelled by an operator,
its lease taken over by another runner, or this runner stopping (the job goes back to the
queue with its cursor, not counted as an attempt, and another node resumes it). A
failed attempt is retried on the runner's backoff (30 s doubling, at most an hour) until
``max_attempts``; a handler that knows better raises :class:`JobFailed` with its own delay,
or with none to fail the job at once; one waiting for a turn (a concurrency slot) raises
:class:`JobDeferred` and goes back to the queue without counting an attempt.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from nubis import metrics
from nubis.jobs.context import (
    Handler,
    JobCancelled,
    JobContext,
    JobDeferred,
    JobFailed,
    JobStopped,
)
from nubis.jobs.store import Job, JobState, JobStore, LeaseLost, now_ms

__all__ = ["JobRunner"]

log = logging.getLogger(__name__)

# Finished jobs are kept this long for `nubis jobs list` and then removed.
KEEP_FINISHED_MS = 30 * 24 * 3600 * 1000
# Progress becomes visible at most this long after a handler reports it.
_PROGRESS_SECONDS = 1.0
# A requested kind is queued at most this often (the archive passes webhook_wake_ms): under a
# steady stream of requests (100 stores a second, each asking for the webhooks job) a run then
# takes whatever came in since the last one rather than one run, with its job's half dozen
# index writes, per request.
REQUEST_GAP_SECONDS = 1.0


def _owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class JobRunner:
    """Runs jobs of the kinds in ``handlers`` from ``store``, one at a time.

    Parameters
    ----------
    store : JobStore
    handlers : mapping of kind -> handler
        Only these kinds are claimed, so a node never takes a job it cannot run.
    lease_seconds : float
        How long a claim lasts without renewal: after a runner dies, its job waits this long
        before another runner takes it over. Renewed every third of it while the job runs.
    poll_seconds : float
        Longest wait between looks for work when idle.
    schedule : mapping of kind -> seconds
        Periodic jobs (e.g. reap every 3600 s); queued once per period across every node.
    schedule_while : mapping of kind -> predicate
        A periodic kind named here is queued only while its predicate holds (the webhooks
        job while a subscription exists), so an archive that needs none has no runs of it.
    request_gap_seconds : float
        The least time between two runs of a kind queued by ``request``.
    """

    def __init__(
        self,
        store: JobStore,
        handlers: Mapping[str, Handler],
        *,
        lease_seconds: float = 60.0,
        poll_seconds: float = 10.0,
        schedule: Mapping[str, int] | None = None,
        schedule_while: Mapping[str, Callable[[], bool]] | None = None,
        owner: str | None = None,
        request_gap_seconds: float = REQUEST_GAP_SECONDS,
    ) -> None:
        self.store = store
        self.handlers = dict(handlers)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.schedule = dict(schedule or {})
        self.schedule_while = dict(schedule_while or {})
        self.owner = owner or _owner_name()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_schedule = 0.0
        self._next_prune = 0.0
        self.request_gap_seconds = request_gap_seconds
        self._requested: set[str] = set()
        self._next_request: dict[str, float] = {}
        # A kind found unwanted (no subscription) ignores requests for its schedule period:
        # otherwise every store would wake the runner to ask the index again.
        self._unwanted_until: dict[str, float] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="nubis-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the running job has been put back (or finished); waits ``timeout``."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            if self._thread.is_alive():
                log.warning("job runner %s did not stop in %.0f s", self.owner, timeout)
            self._thread = None

    def wake(self) -> None:
        """Look for work now (a job was just queued in this process)."""
        self._wake.set()

    def request(self, kind: str) -> None:
        """Run the scheduled kind ``kind`` soon rather than at its next period (within
        ``request_gap_seconds``), if its ``schedule_while`` predicate holds. Cheap enough for
        a request's path: it only notes the kind and, the first time, wakes the runner's
        thread (which then knows when the kind is due, so later requests need not wake it)."""
        if kind in self._requested or time.monotonic() < self._unwanted_until.get(kind, 0.0):
            return
        self._requested.add(kind)
        self._wake.set()

    def enqueue(
        self, kind: str, params: dict[str, Any] | None = None, **options: Any
    ) -> int | None:
        job_id = self.store.enqueue(kind, params, **options)
        self.wake()
        return job_id

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        idle = 0.5
        while not self._stopping.is_set():
            try:
                self._housekeeping()
                self._queue_requested()
                ran = self.run_once()
            except Exception:
                # The index may be down for a while (fail-over): keep trying, slowly.
                log.exception("job runner %s: looking for work failed", self.owner)
                ran = False
            if ran:
                idle = 0.5
                continue
            # Jitter keeps the runners of many workers from polling in lockstep.
            wait = idle * random.uniform(0.8, 1.2)
            if self._requested:
                wait = min(wait, max(0.01, self._next_requested() - time.monotonic()))
            self._wake.wait(wait)
            self._wake.clear()
            idle = min(idle * 2, self.poll_seconds)

    def _next_requested(self) -> float:
        return min(self._next_request.get(kind, 0.0) for kind in self._requested)

    def _queue_requested(self) -> None:
        """Queue the requested kinds whose gap has passed. A kind whose job is running stays
        requested: that run may have read past what prompted the request, so another follows."""
        now = time.monotonic()
        for kind in list(self._requested):
            if now < self._next_request.get(kind, 0.0):
                continue
            wanted = self.schedule_while.get(kind)
            if kind not in self.handlers or (wanted is not None and not wanted()):
                self._requested.discard(kind)
                self._unwanted_until[kind] = now + self.schedule.get(kind, 60)
                continue
            # Cleared before the look, so a request arriving during it is not lost.
            self._requested.discard(kind)
            if self.store.request(kind):
                self._next_request[kind] = now + self.request_gap_seconds
            else:
                self._requested.add(kind)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_schedule:
            # Every minute, or as often as the most frequent kind (replicate) is due.
            self._next_schedule = now + min([60, *self.schedule.values()])
            for kind, every in self.schedule.items():
                wanted = self.schedule_while.get(kind)
                if kind not in self.handlers or (wanted is not None and not wanted()):
                    continue
                if self.store.schedule(kind, every) is not None:
                    log.info("scheduled a %s job (every %d s)", kind, every)
        if now >= self._next_prune:
            self._next_prune = now + 3600
            self.store.prune(now_ms() - KEEP_FINISHED_MS)

    def run_once(self) -> bool:
        """Claim one job and run it to its end here; False when there was nothing to do."""
        if self._stopping.is_set():
            return False
        job = self.store.claim(self.owner, self.lease_seconds, self.handlers)
        if job is None:
            return False
        self._run(job)
        return True

    def run_job(self, job_id: int, handler: Handler) -> bool:
        """Claim the job ``job_id`` (of a kind this runner knows) and run it to its end in the
        calling thread with ``handler`` in its kind's place, e.g. one bound to something only
        this process has; False when it is not claimable (due later, or another runner has
        it). Its outcome is recorded as any job's, so a failure is retried by any runner."""
        job = self.store.claim(self.owner, self.lease_seconds, self.handlers, job_id=job_id)
        if job is None:
            return False
        self._run(job, handler)
        return True

    def _run(self, job: Job, handler: Handler | None = None) -> None:
        ctx = JobContext(job, self._stopping)
        log.info(
            "job %d (%s) started on %s, attempt %d", job.id, job.kind, self.owner, job.attempts
        )
        finished = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(job, ctx, finished),
            name=f"nubis-job-{job.id}",
            daemon=True,
        )
        beat.start()
        try:
            outcome = self._call(job, ctx, handler or self.handlers[job.kind])
        finally:
            finished.set()
            beat.join()
        outcome()

    def _call(self, job: Job, ctx: JobContext, handler: Handler) -> Callable[[], object]:
        """Run the handler; what to record afterwards (once the heartbeat has stopped)."""
        store, owner = self.store, self.owner
        try:
            result = handler(ctx) or {}
        except JobCancelled:
            log.info("job %d (%s) cancelled", job.id, job.kind)
            metrics.job_runs.labels(job.kind, "cancelled").inc()
            return lambda: store.finish(
                job.id, owner, JobState.CANCELLED, progress=ctx.snapshot()[1]
            )
        except JobStopped:
            log.info("job %d (%s) put back: this runner is stopping", job.id, job.kind)
            return lambda: store.release(
                job.id, owner, progress=ctx.snapshot()[1], count_attempt=False
            )
        except JobDeferred as exc:
            wait = exc.retry_in
            log.info("job %d (%s) deferred %.0f s: %s", job.id, job.kind, wait, exc.reason)
            return lambda: store.release(
                job.id, owner, retry_in=wait, progress=ctx.snapshot()[1], count_attempt=False
            )
        except LeaseLost:
            log.warning("job %d (%s): lease lost to another runner; stopped here", job.id, job.kind)
            return lambda: None
        except Exception as exc:
            if isinstance(exc, JobFailed):
                reason, delay = exc.reason, exc.retry_in
            else:
                reason = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
                delay = min(3600.0, 30.0 * 2 ** (job.attempts - 1))
            progress = ctx.snapshot()[1]
            if delay is not None and job.attempts < job.max_attempts:
                retry_in = delay
                metrics.job_runs.labels(job.kind, "retried").inc()
                log.warning(
                    "job %d (%s) failed (attempt %d of %d), retrying in %.0f s: %s",
                    job.id, job.kind, job.attempts, job.max_attempts, retry_in, reason,
                )  # fmt: skip
                return lambda: store.release(
                    job.id, owner, retry_in=retry_in, error=reason, progress=progress
                )
            log.error(
                "job %d (%s) failed for good: %s", job.id, job.kind, reason,
                exc_info=None if isinstance(exc, JobFailed) else exc,
            )  # fmt: skip
            metrics.job_runs.labels(job.kind, "failed").inc()
            return lambda: store.finish(
                job.id, owner, JobState.FAILED, error=reason, progress=progress
            )
        log.info("job %d (%s) done: %s", job.id, job.kind, result)
        metrics.job_runs.labels(job.kind, "done").inc()
        return lambda: store.finish(
            job.id, owner, JobState.DONE, result=result, progress=ctx.snapshot()[1]
        )

    def _heartbeat(self, job: Job, ctx: JobContext, finished: threading.Event) -> None:
        renew_every = self.lease_seconds / 3
        tick = min(_PROGRESS_SECONDS, renew_every)
        saved_version, last_renewal = 0, time.monotonic()
        while not finished.wait(tick):
            version, progress = ctx.snapshot()
            due = time.monotonic() - last_renewal >= renew_every
            if version == saved_version and not due:
                continue
            try:
                cancel = self.store.heartbeat(
                    job.id,
                    self.owner,
                    self.lease_seconds,
                    progress if version != saved_version else None,
                )
            except LeaseLost:
                ctx.lease_lost = True
                return
            except Exception:
                # An index hiccup: the lease has two more renewals of slack before it expires.
                log.exception("job %d: renewing the lease failed", job.id)
                continue
            saved_version, last_renewal = version, time.monotonic()
            if cancel:
                ctx.cancel_requested = True
