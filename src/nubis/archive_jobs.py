"""The background work of an archive: which job kinds this node runs, their handlers and
schedule (a mixin of :class:`nubis.archive.Archive`, which builds the parts it names)."""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from nubis.backup.copies import backup_copies
from nubis.config import Settings
from nubis.edge.evict import Evictor
from nubis.events.delivery import WebhookDelivery
from nubis.events.sink import HttpSink
from nubis.index.database import Index
from nubis.jobs.context import JobContext
from nubis.jobs.heal import Healer
from nubis.jobs.kinds import handlers
from nubis.jobs.runner import JobRunner
from nubis.jobs.schedule import (
    ANALYZE_SCAN,
    CHANGEFEED_EXPIRE,
    EDGE_EVICT,
    REPLICATE,
    WEBHOOKS,
    parse_schedule,
)
from nubis.jobs.store import JobStore
from nubis.logs import redact_url
from nubis.ports.blobs import BlobStore
from nubis.replication.job import Replicator
from nubis.replication.target import DicomWebReplica
from nubis.security.audit import AuditTrail, system_participant
from nubis.security.policy import system_principal
from nubis.services.changefeed import ChangeFeedService
from nubis.services.disk_floor import parse_floor
from nubis.services.guard import Guard
from nubis.services.kek_rewrap import KekRewrap
from nubis.services.maintenance import Maintenance
from nubis.services.query import QueryService
from nubis.services.retention import Retention
from nubis.services.retrieve import RetrieveService
from nubis.services.spool import Spool
from nubis.services.store import StoreService
from nubis.services.study_rekey import StudyRekey
from nubis.services.webhooks import WebhookService
from nubis.services.worklist import WorklistService
from nubis.tiers.lifecycle import Lifecycle
from nubis.tiers.rules import Tiers

if TYPE_CHECKING:
    from nubis.analyzers.job import AnalyzerJobs
    from nubis.dimse.commitment import CommitmentReports
    from nubis.dimse.send import StudySender

__all__ = ["ArchiveJobs"]


class ArchiveJobs:
    """Job handlers built from the archive's parts, each on first use where it loads much."""

    # Built by Archive.__init__.
    settings: Settings
    index: Index
    blobs: BlobStore
    audit: AuditTrail
    guard: Guard
    jobs: JobStore
    job_runner: JobRunner | None
    tiers: Tiers
    lifecycle: Lifecycle
    maintenance: Maintenance
    query: QueryService
    changefeed: ChangeFeedService
    webhooks: WebhookService
    worklist: WorklistService
    rewrap: KekRewrap | None
    rekey: StudyRekey | None
    retention: Retention
    retrieve: RetrieveService
    spool: Spool
    store: StoreService

    def new_job_runner(self, *, scheduled: bool = True) -> JobRunner:
        """A runner of every kind of job this node can run, for ``nubis serve``'s workers and
        ``nubis jobs work`` alike: the same handlers, recording through the same guard (a
        verify job's reads, a tier job's moves) as the archive itself. ``scheduled``: it also
        queues the periodic jobs of ``jobs_schedule``."""
        settings = self.settings
        return JobRunner(
            self.jobs,
            handlers(
                index=self.index,
                blobs=self.blobs,
                maintenance=self.maintenance,
                lifecycle=self.lifecycle,
                tiers=self.tiers,
                rewrap=self.rewrap,
                rekey=self.rekey,
                guard=self.guard,
                actor=system_participant(settings.audit_source),
                commitment=self.deliver_commitment_report,
                audit=self.audit,
                dimse_send=self.run_send,
                healer=self.healer,
                replicate=self.replicator.run if settings.replicate_to else None,
                edge_evict=self.evictor.run if settings.forward_to else None,
                retention=self.retention.run,
                certificate_checks=lambda: self.retention.verify(
                    system_principal(settings.audit_source, via="system"), recorded_by_trail=True
                ),
                analyze=(self.run_analyze_scan, self.run_analyze),
                webhooks=self.webhook_delivery.run if settings.change_feed else None,
                changefeed_expire=self._expire_changefeed if settings.change_feed else None,
            ),
            lease_seconds=settings.jobs_lease_seconds,
            poll_seconds=settings.jobs_poll_seconds,
            schedule=self._schedule() if scheduled else None,
            request_gap_seconds=settings.webhook_wake_ms / 1000,
            schedule_while={
                WEBHOOKS: self.webhooks.any,
                CHANGEFEED_EXPIRE: lambda: self.changefeed.expiry_due(
                    settings.change_feed_retention_days
                ),
            },
        )

    def _schedule(self) -> dict[str, int]:
        schedule = parse_schedule(self.settings.jobs_schedule)
        if self.settings.replicate_to:
            schedule[REPLICATE] = self.settings.replicate_every_seconds
        if self.settings.forward_to:
            schedule[EDGE_EVICT] = self.settings.edge_evict_every_seconds
        if self.settings.analyzers.strip():
            schedule[ANALYZE_SCAN] = self.settings.analyzer_scan_seconds
        if self.settings.change_feed:
            schedule[WEBHOOKS] = self.settings.webhook_every_seconds
            schedule.setdefault(CHANGEFEED_EXPIRE, 86400)
        return schedule

    @cached_property
    def analyzer_jobs(self) -> AnalyzerJobs:
        """The ``analyze-scan`` and ``analyze`` handlers (nubis.analyzers.job): read through
        a retrieve service of their own, so an analysis does not count as a read for the tier
        rules, and store through the archive's store service. Built on first use: a node
        that runs no analysis never loads highdicom or a plug-in."""
        from nubis.analyzers.job import AnalyzerJobs
        from nubis.analyzers.registry import available
        from nubis.analyzers.rules import parse_rules

        settings = self.settings
        return AnalyzerJobs(
            self.index,
            RetrieveService(self.index, self.blobs, guard=self.guard, verify_reads=True),
            self.store,
            self.spool,
            rules=parse_rules(settings.analyzers),
            analyzers=available,
            stable_seconds=settings.analyzer_stable_seconds,
            lookback_hours=settings.analyzer_lookback_hours,
            wake=self.job_runner.wake if self.job_runner is not None else None,
            worklist=self.worklist,
        )

    def run_analyze_scan(self, ctx: JobContext) -> dict[str, Any]:
        """The ``analyze-scan`` job handler."""
        return self.analyzer_jobs.scan(ctx)

    def run_analyze(self, ctx: JobContext) -> dict[str, Any]:
        """The ``analyze`` job handler."""
        return self.analyzer_jobs.analyze(ctx)

    @cached_property
    def webhook_delivery(self) -> WebhookDelivery:
        """The ``webhooks`` job's handler (nubis.events.delivery)."""
        settings = self.settings
        return WebhookDelivery(
            self.index,
            self.changefeed,
            self.query,
            self.webhooks.secrets,
            HttpSink(settings.webhook_timeout_seconds),
            jobs=self.jobs,
            batch=settings.webhook_batch,
            max_attempts=settings.webhook_max_attempts,
            retry_max_seconds=settings.webhook_retry_max_seconds,
        )

    def _expire_changefeed(self, ctx: JobContext) -> dict[str, Any]:
        removed = self.changefeed.expire(self.settings.change_feed_retention_days)
        return {"entries_removed": removed}

    @cached_property
    def replicator(self) -> Replicator:
        """The ``replicate`` job's handler: reads through a retrieve service of its own, so
        what it sends does not count as a read for the tier rules."""
        settings = self.settings
        return Replicator(
            self.index,
            RetrieveService(self.index, self.blobs, guard=self.guard, verify_reads=True),
            self.jobs,
            DicomWebReplica(settings.replicate_to, settings.replicate_api_key),
            retry_max_seconds=settings.replicate_retry_max_seconds,
            confirm_copies=bool(settings.forward_to),
        )

    @cached_property
    def evictor(self) -> Evictor:
        """The ``edge-evict`` job's handler (docs/edge.md)."""
        settings = self.settings
        return Evictor(
            self.index,
            self.blobs,
            self.guard,
            system_participant(settings.audit_source),
            cloud=redact_url(settings.forward_to),
            keep_days=settings.edge_keep_days,
            keep_bytes=parse_floor(settings.edge_keep_bytes).bytes,
        )

    def healer(self) -> Healer | None:
        """The verify job's healer from the ``heal_from`` backup folders, whose manifests are
        read afresh each run (a backup taken since adds copies); None without any."""
        sources = backup_copies(self.settings.heal_from)
        return Healer(self.blobs, sources, self.settings.spool_dir) if sources else None

    @cached_property
    def commitment_reports(self) -> CommitmentReports:
        """Storage commitment reports (PS3.4 J.3.3): queued by the DIMSE server of any node,
        delivered by whichever node runs the job. Built on first use, so commands that never
        speak DIMSE do not load it."""
        from nubis.dimse.commitment import CommitmentReports
        from nubis.dimse.peers import PeerTable

        s = self.settings
        return CommitmentReports(
            jobs=self.jobs,
            index=self.index,
            retrieve=self.retrieve,
            guard=self.guard,
            peers=PeerTable(self.index, s.dimse_peers_cache_seconds),
            ae_title=s.ae_title,
            retry_seconds=s.dimse_commitment_retry_seconds,
            give_up_seconds=s.dimse_commitment_give_up_seconds,
            lease_seconds=s.jobs_lease_seconds,
        )

    def deliver_commitment_report(self, ctx: JobContext) -> dict[str, Any]:
        """The ``commitment-report`` job handler."""
        return self.commitment_reports.deliver(ctx)

    @cached_property
    def sender(self) -> StudySender:
        """Sends studies to DIMSE peers for the people who ask (the web face's Send), as
        ``dimse-send`` jobs. Built on first use, as :attr:`commitment_reports`."""
        from nubis.dimse.peers import PeerTable
        from nubis.dimse.send import StudySender

        s = self.settings
        return StudySender(
            jobs=self.jobs,
            retrieve=self.retrieve,
            guard=self.guard,
            peers=PeerTable(self.index, s.dimse_peers_cache_seconds),
            ae_title=s.ae_title,
            lease_seconds=s.jobs_lease_seconds,
        )

    def run_send(self, ctx: JobContext) -> dict[str, Any] | None:
        """The ``dimse-send`` job handler, for whichever runner claims the job first."""
        return self.sender.run(ctx)
