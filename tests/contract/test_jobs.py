"""Background jobs on every index backend (SQLite, PostgreSQL): claims, leases, progress.

Two Index objects on one database stand for two nodes. What is proved: no job is ever run by
two runners (concurrent claims, SKIP LOCKED on PostgreSQL, the single writer on SQLite); a job
whose runner died (lease not renewed, or a ``nubis jobs work`` process killed with SIGKILL) is
taken over after its lease and resumed from its cursor; progress is visible while a job runs;
cancel, retries, clean stops and periodic scheduling behave.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from nubis.archive import Archive
from nubis.config import load_settings
from nubis.index.database import Index
from nubis.index.schema import jobs
from nubis.jobs.context import JobContext, JobFailed
from nubis.jobs.runner import JobRunner
from nubis.jobs.store import JobState, JobStore
from nubis.security.policy import system_principal


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.database(f"jobs_{abs(hash(request.node.nodeid)):x}"))


@pytest.fixture
def nodes(index_url: str) -> Iterator[tuple[JobStore, JobStore]]:
    """Two nodes' job stores on one database."""
    first = Index(index_url, durable=False)
    first.migrate()
    first.open()
    second = Index(index_url, durable=False)
    second.open()
    yield JobStore(first), JobStore(second)
    second.close()
    first.close()


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_enqueue_claim_finish(nodes: tuple[JobStore, JobStore]) -> None:
    a, _ = nodes
    job_id = a.enqueue("work", {"n": 1}, created_by="test")
    assert job_id is not None
    assert a.enqueue("work", unique_key="once") is not None
    assert a.enqueue("work", unique_key="once") is None  # one job per unique key
    job = a.claim("node-a", 30, ["work"])
    assert job is not None and job.id == job_id and job.params == {"n": 1}
    assert job.state is JobState.RUNNING and job.attempts == 1 and job.lease_owner == "node-a"
    assert a.claim("node-a", 30, ["other"]) is None  # only kinds the runner knows
    assert a.finish(job.id, "node-a", JobState.DONE, result={"ok": True})
    assert not a.finish(job.id, "node-b", JobState.FAILED)  # not its job
    done = a.get(job_id)
    assert done is not None and done.state is JobState.DONE and done.result == {"ok": True}
    assert done.finished_at is not None and done.lease_expires_at is None
    assert done.lease_owner == "node-a"  # who ran it, for nubis jobs list


def test_concurrent_claims_never_take_one_job_twice(nodes: tuple[JobStore, JobStore]) -> None:
    a, b = nodes
    ids = [a.enqueue("work") for _ in range(60)]
    claimed: list[int] = []
    lock = threading.Lock()

    def claimer(store: JobStore, name: str) -> None:
        while (job := store.claim(name, 60, ["work"])) is not None:
            with lock:
                claimed.append(job.id)

    threads = [
        threading.Thread(target=claimer, args=(store, f"node-{i}"))
        for i, store in enumerate([a, b, a, b, a, b])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids)  # each exactly once
    assert a.counts() == {"running": 60}


def test_two_runners_never_run_the_same_job(nodes: tuple[JobStore, JobStore]) -> None:
    a, b = nodes
    ran: list[tuple[int, str]] = []
    lock = threading.Lock()

    def handler(owner: str) -> Callable[[JobContext], dict[str, Any]]:
        def run(ctx: JobContext) -> dict[str, Any]:
            time.sleep(0.02)
            with lock:
                ran.append((ctx.job.id, owner))
            return {"by": owner}

        return run

    runners = [
        JobRunner(store, {"work": handler(name)}, lease_seconds=30, poll_seconds=1, owner=name)
        for store, name in ((a, "node-a"), (b, "node-b"))
    ]
    ids = [a.enqueue("work") for _ in range(40)]
    for runner in runners:
        runner.start()
    try:
        _wait(lambda: a.counts().get("done", 0) == 40)
    finally:
        for runner in runners:
            runner.stop()
    assert Counter(job_id for job_id, _ in ran) == Counter(ids)  # every job once, none twice
    assert {owner for _, owner in ran} == {"node-a", "node-b"}  # both nodes took work
    for job in a.list(limit=100):
        assert job.state is JobState.DONE and job.attempts == 1
        assert job.result == {"by": dict((i, o) for i, o in ran)[job.id]}


def test_a_dead_runners_job_is_taken_over_after_its_lease(
    nodes: tuple[JobStore, JobStore],
) -> None:
    a, b = nodes
    job_id = a.enqueue("work", max_attempts=3)
    assert job_id is not None
    dead = a.claim("dead-node", 1.0, ["work"])
    assert dead is not None
    a.heartbeat(job_id, "dead-node", 1.0, (40, 100, {"after": 40}))
    # ... and then the node dies: nothing renews the lease.
    resumed: list[Any] = []

    def run(ctx: JobContext) -> dict[str, Any]:
        resumed.append((ctx.cursor, ctx.done, ctx.total))
        ctx.progress(100, 100, {"after": 100})
        return {}

    runner = JobRunner(b, {"work": run}, lease_seconds=1.0, owner="node-b")
    assert not runner.run_once()  # the lease still holds
    time.sleep(1.1)
    assert runner.run_once()
    assert resumed == [({"after": 40}, 40, 100)]  # resumed from the dead runner's cursor
    job = a.get(job_id)
    assert job is not None and job.state is JobState.DONE and job.attempts == 2
    # The dead runner, were it to wake up, can change nothing.
    assert not a.finish(job_id, "dead-node", JobState.FAILED)
    with pytest.raises(Exception, match="no longer held"):
        a.heartbeat(job_id, "dead-node", 1.0)


def test_a_job_whose_runners_keep_dying_fails(nodes: tuple[JobStore, JobStore]) -> None:
    a, _ = nodes
    job_id = a.enqueue("work", max_attempts=1)
    assert a.claim("dead-node", 0.05, ["work"]) is not None
    time.sleep(0.1)
    assert a.claim("node-b", 30, ["work"]) is None
    job = a.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state is JobState.FAILED
    assert "dead-node stopped renewing its lease" in (job.last_error or "")


def test_progress_is_visible_while_a_job_runs(nodes: tuple[JobStore, JobStore]) -> None:
    a, b = nodes
    release = threading.Event()

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.progress(5, 10)
        release.wait(10)
        ctx.progress(10, 10)
        return {"n": 10}

    runner = JobRunner(a, {"work": run}, lease_seconds=30, poll_seconds=1)
    job_id = runner.enqueue("work")
    runner.start()
    try:
        # Seen from the other node, within about a second of the report.
        _wait(lambda: (job := b.get(job_id)) is not None and job.progress_done == 5, 5)  # type: ignore[arg-type]
        job = b.get(job_id)  # type: ignore[arg-type]
        assert job is not None and job.state is JobState.RUNNING
        assert job.progress_total == 10 and job.fraction == 0.5
        assert job.lease_owner == runner.owner
        release.set()
        _wait(lambda: b.get(job_id).state is JobState.DONE)  # type: ignore[arg-type, union-attr]
    finally:
        release.set()
        runner.stop()
    done = b.get(job_id)  # type: ignore[arg-type]
    assert done is not None and done.progress_done == 10 and done.result == {"n": 10}


def test_cancel_a_queued_and_a_running_job(nodes: tuple[JobStore, JobStore]) -> None:
    a, b = nodes
    queued = a.enqueue("other")
    assert b.cancel(queued) is JobState.QUEUED  # type: ignore[arg-type]
    assert b.get(queued).state is JobState.CANCELLED  # type: ignore[arg-type, union-attr]
    assert b.cancel(queued) is JobState.CANCELLED  # type: ignore[arg-type]
    assert b.cancel(10_000) is None
    started = threading.Event()

    def run(ctx: JobContext) -> dict[str, Any]:
        started.set()
        for i in range(1000):
            ctx.progress(i, 1000)
            time.sleep(0.02)
        return {}

    runner = JobRunner(a, {"work": run}, lease_seconds=3, poll_seconds=1)
    job_id = runner.enqueue("work")
    runner.start()
    try:
        assert started.wait(10)
        assert b.cancel(job_id) is JobState.RUNNING  # type: ignore[arg-type]
        _wait(lambda: b.get(job_id).state is JobState.CANCELLED, 10)  # type: ignore[arg-type, union-attr]
    finally:
        runner.stop()
    job = b.get(job_id)  # type: ignore[arg-type]
    assert job is not None and 0 < job.progress_done < 1000


def test_failures_are_retried_then_fail(nodes: tuple[JobStore, JobStore]) -> None:
    a, _ = nodes

    def run(ctx: JobContext) -> dict[str, Any]:
        raise ValueError(f"broken on attempt {ctx.job.attempts}")

    runner = JobRunner(a, {"work": run})
    job_id = a.enqueue("work", max_attempts=2)
    assert runner.run_once()
    job = a.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state is JobState.QUEUED
    assert job.last_error == "ValueError: broken on attempt 1"
    assert job.not_before > time.time() * 1000 + 20_000  # backs off before trying again
    a.index.write(lambda c: c.execute(update(jobs).values(not_before=0)))
    assert runner.run_once()
    job = a.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state is JobState.FAILED and job.attempts == 2
    assert job.last_error == "ValueError: broken on attempt 2"


def test_a_handler_chooses_when_to_retry_or_to_stop(nodes: tuple[JobStore, JobStore]) -> None:
    """JobFailed: the handler's own delay instead of the runner's backoff, its reason as the
    error shown; without a delay the job fails at once, attempts left or not."""
    a, _ = nodes
    delays = [2.0, None]

    def run(ctx: JobContext) -> dict[str, Any]:
        raise JobFailed(f"peer down (attempt {ctx.job.attempts})", retry_in=delays.pop(0))

    runner = JobRunner(a, {"work": run})
    job_id = a.enqueue("work", max_attempts=10)
    before = time.time() * 1000
    assert runner.run_once()
    job = a.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state is JobState.QUEUED
    assert job.last_error == "peer down (attempt 1)"
    assert before + 2000 <= job.not_before <= time.time() * 1000 + 2000
    assert not runner.run_once()  # not due yet
    a.index.write(lambda c: c.execute(update(jobs).values(not_before=0)))
    assert runner.run_once()
    job = a.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state is JobState.FAILED and job.attempts == 2
    assert job.last_error == "peer down (attempt 2)"


def test_run_job_runs_that_job_here_with_the_handler_given(
    nodes: tuple[JobStore, JobStore],
) -> None:
    """run_job claims one job by id and runs it with a handler of the caller's (one bound to
    what only its process has); a job another runner holds, or of a kind the runner does not
    know, is left alone."""
    a, b = nodes
    runner = JobRunner(a, {"work": lambda ctx: {"by": "kind"}})
    first, second, third = a.enqueue("work"), a.enqueue("work"), a.enqueue("other")
    assert first is not None and second is not None and third is not None
    assert runner.run_job(second, lambda ctx: {"by": "given"})
    job = a.get(second)
    assert job is not None and job.state is JobState.DONE and job.result == {"by": "given"}
    assert a.get(first).state is JobState.QUEUED  # type: ignore[union-attr]
    assert b.claim("node-b", 30, ["work"], job_id=first) is not None
    assert not runner.run_job(first, lambda ctx: {"by": "given"})
    assert not runner.run_job(third, lambda ctx: {"by": "given"})
    assert a.get(first).lease_owner == "node-b"  # type: ignore[union-attr]
    assert a.get(third).state is JobState.QUEUED  # type: ignore[union-attr]


def test_a_stopping_runner_puts_its_job_back(nodes: tuple[JobStore, JobStore]) -> None:
    a, b = nodes
    started = threading.Event()

    def run(ctx: JobContext) -> dict[str, Any]:
        start = ctx.cursor or 0
        started.set()
        for i in range(start, 400):
            ctx.progress(i, 400, i)
            time.sleep(0.005)
        return {"started_at": start}

    runner = JobRunner(a, {"work": run}, lease_seconds=30, poll_seconds=1)
    job_id = runner.enqueue("work")
    runner.start()
    assert started.wait(10)
    time.sleep(0.2)
    runner.stop()
    job = b.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state is JobState.QUEUED
    assert job.attempts == 0 and job.cursor > 0  # not held against it; resumable
    other = JobRunner(b, {"work": run})
    assert other.run_once()
    done = b.get(job_id)  # type: ignore[arg-type]
    assert done is not None and done.state is JobState.DONE
    assert done.result == {"started_at": job.cursor}


def test_periodic_jobs_are_scheduled_once_per_period(nodes: tuple[JobStore, JobStore]) -> None:
    a, b = nodes
    now = int(time.time() * 1000)
    results: list[int | None] = []

    def schedule(store: JobStore) -> None:
        for _ in range(10):
            results.append(store.schedule("reap", 3600, now=now))

    threads = [threading.Thread(target=schedule, args=(s,)) for s in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len([r for r in results if r is not None]) == 1
    assert len(a.list(kind="reap")) == 1
    # While that run is queued, the next period adds nothing; once it is done, it does.
    assert a.schedule("reap", 3600, now=now + 3_600_000) is None
    job = a.claim("n", 30, ["reap"])
    assert job is not None and a.finish(job.id, "n", JobState.DONE)
    assert a.schedule("reap", 3600, now=now + 3_600_000) is not None
    assert a.schedule("reap", 3600, now=now + 3_600_000) is None


@pytest.mark.slow
def test_a_killed_worker_process_is_taken_over(index_url: str, tmp_path: Path) -> None:
    """SIGKILL a ``nubis jobs work`` process mid-verify: another node finishes the job."""
    from nubis.tools.synth import make_ct_series

    data = tmp_path / "data"
    overrides = {
        "data_dir": str(data),
        "index": index_url,
        "durable": "false",
        "jobs_lease_seconds": "3",
        "jobs_schedule": "",
    }
    archive = Archive(load_settings(environ={}, overrides=overrides))
    archive.index.migrate()
    archive.index.open()
    try:
        files = make_ct_series(tmp_path / "ct", n_instances=12, rows=128, columns=128)
        for path in files:
            assert archive.store.store(
                archive.spool.from_file(path), principal=system_principal()
            ).ok
        # About 0.03 MB per object at 0.1 MB/s: 4 s for all, long enough to kill it midway.
        job_id = archive.jobs.enqueue("verify", {"max_mb_per_s": 0.1})
        args = [sys.executable, "-m", "nubis", "jobs", "work"]
        for name, value in overrides.items():
            args += ["--set", f"{name}={value}"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait(lambda: (archive.jobs.get(job_id).progress_done or 0) >= 3, 60)  # type: ignore[arg-type, union-attr]
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        job = archive.jobs.get(job_id)  # type: ignore[arg-type]
        assert job is not None and job.state is JobState.RUNNING and job.progress_done < 12
        killed_owner = job.lease_owner
        assert archive.job_runner is not None
        runner = archive.job_runner
        assert not runner.run_once()  # the dead worker's lease still holds
        _wait(lambda: runner.run_once(), 10)
        job = archive.jobs.get(job_id)  # type: ignore[arg-type]
        assert job is not None and job.state is JobState.DONE and job.attempts == 2
        assert job.lease_owner == runner.owner != killed_owner
        assert job.result is not None and job.result["ok"] == 12 and job.result["problems"] == []
    finally:
        archive.index.close()
