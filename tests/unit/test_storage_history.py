"""Daily storage snapshots per tier (nubis.tiers.history, migration 0011) and the
``storage-snapshot`` job that takes them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from nubis.index.database import Index
from nubis.index.schema import instances, series, studies
from nubis.jobs.context import JobContext
from nubis.jobs.schedule import SNAPSHOT, parse_schedule
from nubis.jobs.store import JobStore
from nubis.tiers.history import (
    latest_snapshot,
    record_snapshot,
    snapshots,
    take_snapshot,
    today,
)
from nubis.tiers.rules import parse_tiers

TIERS = parse_tiers("hot=STANDARD,cold=STANDARD_IA")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(f"sqlite:///{tmp_path / 'index.sqlite'}", durable=False)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


def _store(index: Index, sizes: list[int]) -> None:
    """Index rows for objects of these sizes (the snapshot counts rows, not blobs)."""

    def job(conn):  # type: ignore[no-untyped-def]
        study = conn.execute(
            insert(studies).values(partition="default", study_uid="1.2.3", created_at=0,
                                   updated_at=0, attrs="{}", modalities="")
        ).inserted_primary_key[0]  # fmt: skip
        one = conn.execute(
            insert(series).values(study_pk=study, series_uid="1.2.3.1", attrs="{}",
                                  created_at=0, num_instances=0)
        ).inserted_primary_key[0]  # fmt: skip
        for i, size in enumerate(sizes):
            conn.execute(
                insert(instances).values(
                    series_pk=one,
                    partition="default",
                    sop_instance_uid=f"1.2.3.1.{i}",
                    sop_class_uid="1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    blob_key=f"k{i}",
                    size=size,
                    sha256="0" * 64,
                    metadata_json="{}",
                    created_at=0,
                )
            )

    index.write(job)


def test_a_snapshot_counts_every_tier_and_replaces_the_days_earlier_one(index: Index) -> None:
    assert take_snapshot(index, TIERS)["tiers"] == {
        "hot": {"objects": 0, "bytes": 0},
        "cold": {"objects": 0, "bytes": 0},
    }
    _store(index, [100, 250])
    take_snapshot(index, TIERS)
    kept = snapshots(index)
    assert len(kept) == 1 and kept[0].day == today()
    assert kept[0].usage == {"hot": (2, 350), "cold": (0, 0)} and kept[0].bytes == 350


def test_snapshots_are_read_by_window_oldest_first(index: Index) -> None:
    end = date(2025, 6, 30)
    for back in (400, 30, 1, 0):
        record_snapshot(index, end - timedelta(days=back), {"hot": (back, back * 10)})
    assert [s.day for s in snapshots(index, days=31, until=end)] == [
        end - timedelta(days=30), end - timedelta(days=1), end,
    ]  # fmt: skip
    assert len(snapshots(index)) == 4
    assert [s.day for s in snapshots(index, days=1, until=end - timedelta(days=1))] == [
        end - timedelta(days=1)
    ]


def test_the_latest_snapshot(index: Index) -> None:
    assert latest_snapshot(index) is None
    record_snapshot(index, date(2025, 3, 1), {"hot": (1, 10)})
    record_snapshot(index, date(2025, 2, 1), {"hot": (9, 90)})
    latest = latest_snapshot(index)
    assert (
        latest is not None and latest.day == date(2025, 3, 1) and latest.usage == {"hot": (1, 10)}
    )


def test_the_job_kind_is_scheduled_daily_by_default(index: Index) -> None:
    from nubis.config import load_settings
    from nubis.jobs.kinds import handlers

    assert parse_schedule(load_settings(environ={}).jobs_schedule)[SNAPSHOT] == 86400
    store = JobStore(index)
    job_id = store.enqueue(SNAPSHOT)
    assert job_id is not None
    job = store.claim("test", 60, [SNAPSHOT])
    assert job is not None
    kinds = handlers(
        index=index,
        blobs=None,
        maintenance=None,
        lifecycle=None,
        tiers=TIERS,  # type: ignore[arg-type]
    )
    result = kinds[SNAPSHOT](JobContext(job, threading.Event()))
    assert result == {"day": today().isoformat(), "tiers": {
        "hot": {"objects": 0, "bytes": 0}, "cold": {"objects": 0, "bytes": 0}}}  # fmt: skip
