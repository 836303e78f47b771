"""The archive's state as numbers, for ``/metrics`` (nubis.web.metrics): jobs by kind and state,
storage by tier, the audit chain's length, replication lag, free disk.

Read at each scrape, each by one aggregate statement, so a scrape stays cheap on a large
archive: jobs and the outbox are small tables, the audit chain's length is its head's sequence
number (a primary key lookup). Storage by tier counts every object (about 0.4 s per 500,000
objects on SQLite), so it is counted again only every :data:`STORAGE_RECOUNT_SECONDS` in a
process; the figure's age is reported with it.

Numbers only, no patient data, but they span every tenant: authorized by the Guard for
Action.MONITOR (the monitor role, and the home tenant's admins).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select

from nubis.index import outbox_sql
from nubis.index.database import Index
from nubis.index.schema import audit_log, jobs
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard
from nubis.tiers.report import usage_by_tier
from nubis.tiers.rules import Tiers

log = logging.getLogger(__name__)

STORAGE_RECOUNT_SECONDS = 300.0


@dataclass(frozen=True)
class Disk:
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Reading:
    """One reading of the gauges (see the module docs)."""

    jobs: dict[tuple[str, str], int]  # (kind, state) -> jobs
    storage: dict[str, tuple[int, int]]  # tier -> (objects, bytes)
    storage_age_seconds: float
    audit_records: int
    # None without a replica (replicate_to empty).
    replication_lag_seconds: float | None
    replication_backlog: int | None
    replication_parked: int | None
    disks: dict[str, Disk]  # spool, blobs, index -> its file system's space


class ArchiveGauges:
    """Readings of the archive's gauges under the Guard (see the module docs)."""

    def __init__(
        self,
        index: Index,
        guard: Guard,
        tiers: Tiers,
        *,
        folders: Mapping[str, Path],
        replicating: bool,
    ) -> None:
        self.index = index
        self.guard = guard
        self.tiers = tiers
        self.folders = dict(folders)
        self.replicating = replicating
        self._lock = threading.Lock()
        self._storage: tuple[float, dict[str, tuple[int, int]]] | None = None

    def read(self, who: Principal) -> Reading | None:
        """A reading now; None when the index does not answer (what a scrape then reports:
        the archive is up, its index is not). Forbidden (recorded) for a caller who may not."""
        self.guard.authorize(who, Action.MONITOR, "read the archive's metrics")
        try:
            return self._read()
        except Exception as exc:
            log.warning("the index did not answer for the metrics: %s", type(exc).__name__)
            return None

    def _read(self) -> Reading:
        with self.index.reading() as conn:
            by_kind = conn.execute(
                select(jobs.c.kind, jobs.c.state, func.count()).group_by(jobs.c.kind, jobs.c.state)
            ).all()
            audit_records = conn.execute(select(func.max(audit_log.c.seq))).scalar_one()
            status = outbox_sql.status(conn, _now_ms()) if self.replicating else None
        counted_at, storage = self._storage_usage()
        return Reading(
            jobs={(str(kind), str(state)): int(n) for kind, state, n in by_kind},
            storage=storage,
            storage_age_seconds=max(0.0, time.monotonic() - counted_at),
            audit_records=int(audit_records or 0),
            replication_lag_seconds=status.lag_seconds(_now_ms()) if status else None,
            replication_backlog=status.backlog if status else None,
            replication_parked=status.parked if status else None,
            disks=self._disks(),
        )

    def _storage_usage(self) -> tuple[float, dict[str, tuple[int, int]]]:
        with self._lock:  # one count at a time: scrapes arriving together wait for it
            cached = self._storage
            if cached is None or time.monotonic() - cached[0] >= STORAGE_RECOUNT_SECONDS:
                cached = (time.monotonic(), usage_by_tier(self.index, self.tiers))
                self._storage = cached
            return cached

    def _disks(self) -> dict[str, Disk]:
        found = {}
        for role, folder in self.folders.items():
            try:
                stat = os.statvfs(folder)
            except OSError:
                continue  # not created yet (a spool before the first store)
            found[role] = Disk(stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize)
        return found


def _now_ms() -> int:
    return int(time.time() * 1000)


__all__ = ["STORAGE_RECOUNT_SECONDS", "ArchiveGauges", "Disk", "Reading"]
