"""Running the archive: background jobs, storage per tier and its cost, the DIMSE peer table.

These span every tenant (a job walks every partition, the tiers hold every tenant's objects,
the peer table admits callers into any tenant), so they are the home tenant's business: every
call is authorized by the Guard for Action.OPERATE, which only admins of the home tenant hold
(nubis.security.policy), and a refusal is recorded as a Security Alert. The admin pages of the
web face call these, with the same stores the CLI uses (``nubis jobs``, ``nubis storage
report``, ``nubis dimse peers``).

A change to the peer table is who may reach the archive: it is recorded as a Security Alert
(Security Configuration, PS3.15 A.5.3.11) naming the peer. Queuing or cancelling a job is not
recorded: a job that reads patient data records its reads itself, for the job's creator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection

from nubis.dimse.peers import Peer, PeerTable
from nubis.errors import BadRequest, NotFound
from nubis.index import edge_sql, outbox_sql
from nubis.index.database import Index
from nubis.index.edge_sql import EdgeHoldings
from nubis.index.outbox_sql import ReplicationStatus
from nubis.jobs.schedule import SNAPSHOT
from nubis.jobs.store import Job, JobState, JobStore, now_ms
from nubis.logs import redact_url
from nubis.model.audit import EventOutcome, EventType
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard
from nubis.tiers.history import DaySnapshot, latest_snapshot, snapshots, today
from nubis.tiers.report import StorageReport, build_report, usage_by_tier
from nubis.tiers.rules import Tiers

# What an operator may queue by hand: the periodic kinds. A rewrap belongs to `nubis keys
# retire`, a commitment report to the DIMSE server.
RUNNABLE_KINDS = ("verify", "reap", "tier", SNAPSHOT)
MAX_JOBS_LISTED = 200
MAX_MONTHS = 120


@dataclass(frozen=True)
class StorageView:
    """What the storage page shows: the report of now (``nubis storage report``, with its
    projection) and the daily history, ending with a point computed now."""

    report: StorageReport
    history: list[DaySnapshot]
    prices: dict[str, float | None]

    @property
    def tiers(self) -> list[str]:
        """Every tier in the report's order (configured first, then any left in history)."""
        names = [t.tier for t in self.report.tiers]
        for day in self.history:
            names += [name for name in day.usage if name not in names]
        return names


class Operations:
    """Jobs, storage and DIMSE peers under the Guard (see the module docs)."""

    def __init__(
        self,
        index: Index,
        guard: Guard,
        jobs: JobStore,
        *,
        tiers: Tiers,
        prices: dict[str, float | None],
        peers: PeerTable,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.index = index
        self.guard = guard
        self.job_store = jobs
        self.tiers = tiers
        self.prices = prices
        self.peer_table = peers
        self.wake = wake

    def authorize(self, who: Principal, what: str) -> None:
        """Whether ``who`` may run the archive (OPERATE); Forbidden (recorded) otherwise. A
        front door asks first when it has a form to check: a refusal then says nothing else."""
        self.guard.authorize(who, Action.OPERATE, what)

    _authorize = authorize

    # ------------------------------------------------------------------ jobs
    def jobs(
        self,
        who: Principal,
        *,
        states: Sequence[JobState] = (),
        kind: str | None = None,
        limit: int = 50,
    ) -> list[Job]:
        """Jobs, newest first."""
        self._authorize(who, "list jobs")
        return self.job_store.list(
            limit=max(1, min(limit, MAX_JOBS_LISTED)), states=list(states), kind=kind or None
        )

    def job_counts(self, who: Principal) -> dict[str, int]:
        self._authorize(who, "count jobs")
        return self.job_store.counts()

    def jobs_by_id(self, who: Principal, ids: Sequence[int]) -> list[Job]:
        """These jobs as they are now (what a page polls for progress); unknown ids are left
        out."""
        self._authorize(who, "follow jobs")
        found = (self.job_store.get(job_id) for job_id in list(dict.fromkeys(ids))[:100])
        return [job for job in found if job is not None]

    def run_job(self, who: Principal, kind: str, params: dict[str, Any] | None = None) -> int:
        """Queue a job of ``kind``; whichever node is free runs it. Its id."""
        self._authorize(who, f"run a {kind} job")
        if kind not in RUNNABLE_KINDS:
            raise BadRequest(f"job kind {kind!r}: one of {', '.join(RUNNABLE_KINDS)}")
        job_id = self.job_store.enqueue(kind, params or {}, created_by=who.id)
        assert job_id is not None  # no unique key: always queued
        if self.wake is not None:
            self.wake()
        return job_id

    def cancel_job(self, who: Principal, job_id: int) -> JobState:
        """Cancel: a queued job at once, a running one at its next progress report. The
        state it was found in."""
        self._authorize(who, f"cancel job {job_id}")
        state = self.job_store.cancel(job_id)
        if state is None:
            raise NotFound(f"no job {job_id}")
        return state

    # ------------------------------------------------------------------ replication
    def replication_status(self, who: Principal) -> ReplicationStatus:
        """The replica's lag, backlog, last error and last verified point (docs/replication.md)."""
        self._authorize(who, "read the replication status")
        with self.index.reading() as conn:
            return outbox_sql.status(conn, now_ms())

    def edge_holdings(self, who: Principal) -> EdgeHoldings:
        """An edge node's local and evicted objects and bytes (docs/edge.md)."""
        self._authorize(who, "read the replication status")
        with self.index.reading() as conn:
            return edge_sql.holdings(conn)

    def retry_replication(self, who: Principal) -> int:
        """Make the outbox entries the replica refused too often due again; how many."""
        self._authorize(who, "retry parked replication entries")
        count = self.index.write(outbox_sql.unpark)
        if self.wake is not None:
            self.wake()
        return count

    def promote(self, who: Principal, primary: str) -> tuple[int, str]:
        """Make this replica of ``primary`` a primary: it takes changes from every client
        again, on every node within RECHECK_SECONDS (nubis.services.replica_role). Recorded
        (Security Alert, Security Configuration) in the commit that promotes. Returns when and
        by whom it was promoted; a repeat changes nothing and answers the first promotion."""
        self._authorize(who, "promote this replica to a primary")
        if not primary:
            raise BadRequest(
                "this archive is not a replica (replica_of is not set): nothing to promote"
            )
        record = self.guard.record_job(
            audit_events.security_alert(
                who,
                EventType.SECURITY_CONFIGURATION,
                outcome=EventOutcome.SUCCESS,
                description=f"read-only replica of {redact_url(primary)} promoted to a primary",
            )
        )

        def job(conn: Connection) -> tuple[int, str]:
            if outbox_sql.promote(conn, who.id, now_ms()) and record is not None:
                record(conn)
            found = outbox_sql.promoted(conn)
            assert found is not None
            return found

        return self.index.write(job)

    def demote(self, who: Principal, primary: str) -> bool:
        """Make this promoted archive a read-only replica of ``primary`` again (a fail-back:
        docs/replication.md), on every node within RECHECK_SECONDS; recorded in its commit.
        False when it was not promoted (nothing changes)."""
        self._authorize(who, "demote this archive to a read-only replica")
        if not primary:
            raise BadRequest(
                "replica_of is not set: name the primary this archive becomes a replica of"
            )
        record = self.guard.record_job(
            audit_events.security_alert(
                who,
                EventType.SECURITY_CONFIGURATION,
                outcome=EventOutcome.SUCCESS,
                description=f"demoted to a read-only replica of {redact_url(primary)}",
            )
        )

        def job(conn: Connection) -> bool:
            changed = outbox_sql.demote(conn)
            if changed and record is not None:
                record(conn)
            return changed

        return self.index.write(job)

    # ------------------------------------------------------------------ storage
    def storage(
        self, who: Principal, *, growth: float = 0.05, months: int = 12, days: int = 365
    ) -> StorageView:
        """Objects, bytes and monthly cost per tier now, projected ``months`` ahead at
        ``growth`` a month (``nubis storage report``), and the last ``days`` days of history."""
        self._authorize(who, "show storage and cost")
        if not 0 <= growth <= 10:
            raise BadRequest("growth is a monthly rate between 0 and 1000 %")
        if not 0 <= months <= MAX_MONTHS:
            raise BadRequest(f"months is 0 to {MAX_MONTHS}")
        now = usage_by_tier(self.index, self.tiers)
        report = build_report(now, self.tiers, self.prices, growth=growth, months=months)
        day = today()
        history = [s for s in snapshots(self.index, days=days, until=day) if s.day != day]
        history.append(DaySnapshot(day, now))
        return StorageView(report, history, self.prices)

    def storage_at_a_glance(self, who: Principal) -> tuple[date, StorageReport]:
        """The latest daily snapshot, priced (what an overview shows without counting every
        object again: ~0.4 s per 500,000 objects on SQLite); counted now when there is none."""
        self._authorize(who, "show storage and cost")
        latest = latest_snapshot(self.index)
        if latest is None:
            latest = DaySnapshot(today(), usage_by_tier(self.index, self.tiers))
        return latest.day, build_report(latest.usage, self.tiers, self.prices, months=0)

    # ------------------------------------------------------------------ DIMSE peers
    def peers(self, who: Principal) -> list[Peer]:
        self._authorize(who, "list DIMSE peers")
        return self.peer_table.all()

    def put_peer(self, who: Principal, peer: Peer) -> None:
        """Add or replace the entry of ``peer.ae_title`` (every node sees it within
        dimse_peers_cache_seconds)."""
        self._authorize(who, f"set DIMSE peer {peer.ae_title}")
        replaced = any(p.ae_title == peer.ae_title for p in self.peer_table.all())
        self.peer_table.put(peer)
        may = ", ".join(
            what for what, allowed in (("store", peer.store), ("query", peer.query),
                                       ("retrieve", peer.retrieve)) if allowed
        ) or "nothing"  # fmt: skip
        where = f"{peer.host or 'any host'}:{peer.port}"
        cert = " with a bound TLS certificate" if peer.binds_certificate else ""
        self._record_peer(
            who,
            peer.ae_title,
            f"DIMSE peer {peer.ae_title} {'replaced' if replaced else 'added'}: {where}, "
            f"may {may}{cert}",
        )

    def remove_peer(self, who: Principal, ae_title: str) -> None:
        self._authorize(who, f"remove DIMSE peer {ae_title}")
        if not self.peer_table.remove(ae_title):
            raise NotFound(f"{ae_title.strip()} is not in the peer table")
        self._record_peer(who, ae_title.strip(), f"DIMSE peer {ae_title.strip()} removed")

    def _record_peer(self, who: Principal, ae_title: str, description: str) -> None:
        self.guard.record(
            audit_events.security_configuration_changed(
                who,
                f"nubis:dimse-peer/{ae_title}",
                ae_title,
                description=description,
                request_id=who.request_id,
            )
        )


__all__ = ["MAX_JOBS_LISTED", "RUNNABLE_KINDS", "Operations", "StorageView"]
