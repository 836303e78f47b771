"""The analyzer runs table on every index backend (SQLite, PostgreSQL): a stable study is
queued once per analyzer version with its job in one commit, and an analyzer's concurrency
slots are never over-taken by two nodes at once (an advisory lock on PostgreSQL, the single
writer on SQLite); a job that finds no slot goes back without spending an attempt."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert

from nubis.index import analyzer_runs_sql as runs
from nubis.index.database import Index
from nubis.index.schema import studies
from nubis.jobs.context import JobContext, JobDeferred
from nubis.jobs.runner import JobRunner
from nubis.jobs.store import JobState, JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Index, Index]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        url = str(
            request.getfixturevalue("postgres").database(f"runs_{abs(hash(request.node.nodeid)):x}")
        )
    first = Index(url, durable=False)
    first.migrate()
    first.open()
    second = Index(url, durable=False)
    second.open()
    yield first, second
    second.close()
    first.close()


def _study(index: Index, uid: str, updated_at: int, modalities: str = "CT") -> int:
    row = {
        "partition": "default", "study_uid": uid, "modalities": modalities, "num_series": 1,
        "num_instances": 1, "attrs": "{}", "created_at": updated_at, "updated_at": updated_at,
    }  # fmt: skip
    return int(
        index.write(
            lambda c: c.execute(insert(studies).values(row).returning(studies.c.id)).scalar_one()
        )
    )


def test_a_stable_study_is_queued_once_per_analyzer_version(nodes: tuple[Index, Index]) -> None:
    a, _ = nodes
    stable = _study(a, "1.2.3.1", updated_at=1_000)
    _study(a, "1.2.3.2", updated_at=9_000)  # still receiving instances
    _study(a, "1.2.3.3", updated_at=10)  # older than the lookback

    def found(version: str) -> list[str]:
        with a.reading() as conn:
            return [
                c.study_uid
                for c in runs.candidates(
                    conn, "ct-qc", version, stable_before=5_000, since=100, limit=10
                )
            ]

    assert found("1") == ["1.2.3.1"]
    job_id = a.write(
        lambda c: runs.queue(c, stable, "ct-qc", "1", {"study": "1.2.3.1"}, now=2, max_attempts=3)
    )
    job = JobStore(a).get(job_id)
    assert job is not None and job.kind == "analyze" and job.state is JobState.QUEUED
    assert found("1") == [] and found("2") == ["1.2.3.1"]
    with a.reading() as conn:
        assert runs.outstanding(conn, "ct-qc", "1") == 1


def test_two_nodes_never_take_more_slots_than_the_limit(nodes: tuple[Index, Index]) -> None:
    a, b = nodes
    run_ids = []
    for uid in ("1.2.4.1", "1.2.4.2"):
        _study(a, uid, 0)
        run = a.write(lambda c, uid=uid: runs.ensure_run(c, "default", uid, "ct-qc", "1", now=0))
        assert run is not None and run.state == runs.QUEUED
        run_ids.append(run.id)
    barrier = threading.Barrier(2)
    taken: dict[int, bool] = {}

    def take(index: Index, run_id: int) -> None:
        barrier.wait()
        taken[run_id] = index.write(
            lambda c: runs.take_slot(
                c, run_id, "ct-qc", limit=1, job_id=1, now=1_000, slot_ms=60_000
            )
        )

    threads = [
        threading.Thread(target=take, args=(index, run_id))
        for index, run_id in zip((a, b), run_ids, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken.values()) == [False, True]
    winner = next(r for r, ok in taken.items() if ok)
    loser = next(r for r, ok in taken.items() if not ok)

    def retry(now: int) -> bool:
        return b.write(
            lambda c: runs.take_slot(c, loser, "ct-qc", limit=1, job_id=2, now=now, slot_ms=60_000)
        )

    assert not retry(2_000)
    assert retry(61_001)  # the winner's slot expired (its node died)
    b.write(lambda c: runs.finish(c, loser, runs.DONE, now=61_002))
    assert a.write(
        lambda c: runs.take_slot(c, winner, "ct-qc", limit=1, job_id=3, now=61_003, slot_ms=1)
    )


def test_a_deferred_job_goes_back_without_spending_an_attempt(nodes: tuple[Index, Index]) -> None:
    a, _ = nodes
    store = JobStore(a)

    def wait(ctx: JobContext) -> None:
        raise JobDeferred("no free slot", retry_in=30)

    job_id = store.enqueue("work", max_attempts=1)
    assert job_id is not None
    assert JobRunner(store, {"work": wait}).run_once()
    job = store.get(job_id)
    assert job is not None and job.state is JobState.QUEUED and job.attempts == 0
