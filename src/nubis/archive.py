"""The composition root: builds the index, blob store and services from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from nubis.archive_jobs import ArchiveJobs
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.blobs.folder_tiers import with_folder_tiers
from nubis.blobs.registry import open_blob_store
from nubis.config import Settings
from nubis.crypto.registry import keyring_exists, open_key_provider
from nubis.crypto.webhook_secrets import SecretBox
from nubis.dimse.peers import PeerTable
from nubis.edge.cloud import CloudArchive
from nubis.edge.read_through import ReadThroughStore
from nubis.errors import StorageUnavailable
from nubis.index.database import Index
from nubis.jobs.schedule import (
    SNAPSHOT,
    WEBHOOKS,
)
from nubis.jobs.store import JobStore
from nubis.logs import redact_url
from nubis.ports.blobs import BlobStore
from nubis.ports.keys import KeyProvider
from nubis.retention.rules import load_rules
from nubis.security import audit_events
from nubis.security.audit import AuditTrail, system_participant
from nubis.security.audit_export import SyslogForwarder
from nubis.security.authn import Authenticator, OidcVerifier
from nubis.security.policy import AuthPolicy, parse_roles
from nubis.security.sessions import SessionStore
from nubis.security.throttle import Lockout, LoginThrottle, ThrottlePolicy
from nubis.security.users import UserStore
from nubis.services.accounts import Accounts
from nubis.services.aggregates import AggregateService
from nubis.services.audit_log import AuditLog
from nubis.services.changefeed import ChangeFeedService
from nubis.services.corrections import CorrectionService
from nubis.services.disk_floor import DiskFloor, parse_floor
from nubis.services.export import ExportService
from nubis.services.fhir import ImagingStudies
from nubis.services.gauges import ArchiveGauges
from nubis.services.guard import Guard
from nubis.services.kek_rewrap import KekRewrap
from nubis.services.legal_holds import LegalHolds
from nubis.services.maintenance import Certifying, Maintenance
from nubis.services.metadata_export import MetadataExport
from nubis.services.operations import Operations
from nubis.services.quarantine import QuarantineService
from nubis.services.query import QueryService
from nubis.services.replica_role import ReplicaRole
from nubis.services.research import ResearchService
from nubis.services.research_view import ResearchView
from nubis.services.retention import Retention
from nubis.services.retrieve import RetrieveService
from nubis.services.sharing import SharingService
from nubis.services.shredding import ShredService
from nubis.services.spool import Spool
from nubis.services.store import StoreService
from nubis.services.study_rekey import StudyRekey
from nubis.services.webhooks import WebhookService
from nubis.services.worklist import WorklistService
from nubis.services.worklist_events import WorklistEvents
from nubis.tiers.compression import TierCompressor
from nubis.tiers.history import snapshots
from nubis.tiers.lifecycle import Lifecycle
from nubis.tiers.movers import find_mover
from nubis.tiers.reads import ReadTracker
from nubis.tiers.rules import Tiers, parse_compression, parse_prices, parse_rules, parse_tiers

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


def _blob_store(
    settings: Settings, tiers: Tiers, index: Index
) -> tuple[KeyProvider | None, BlobStore]:
    """The blob store, wrapped for encryption at rest unless it is off and never was on."""
    # Tier folders and buckets under the encryption, which does not care where its ciphertext
    # lives.
    store = with_folder_tiers(open_blob_store(settings.blobs_url, durable=settings.durable), tiers)
    if any(t.bucket for t in tiers.all):
        # Only here: bucket tiers need boto3, which only S3 deployments install.
        from nubis.blobs.bucket_tiers import with_bucket_tiers

        store = with_bucket_tiers(store, tiers)
    if not settings.encrypt_at_rest and not keyring_exists(settings.keyring_url):
        return None, store
    keys = open_key_provider(settings.keyring_url, durable=settings.durable, index=index)
    # Off after being on: new objects are plaintext, encrypted ones stay readable.
    return keys, EncryptedBlobStore(store, keys, accept_plaintext=not settings.encrypt_at_rest)


def _erasure_copies(settings: Settings) -> dict[str, str]:
    """What an erasure certificate can say of the copies beyond the primary blob store."""
    if settings.replicate_to:
        replica = (
            f"a delete queued for the replica {redact_url(settings.replicate_to)} in the "
            f"erasure's own transaction, applied after {settings.replicate_delete_delay_days} "
            "day(s) (replicate_delete_delay_days); nubis replication status shows when"
        )
    else:
        replica = "none configured"
    backups = (
        "backup folders taken before this erasure still hold the objects until they are "
        "discarded by their own retention"
    )
    if settings.encrypt_at_rest:
        backups += "; encrypted under the patient's key, which a key shred erases in them too"
    return {"replica": replica, "backups": backups}


def _ingest_folders(settings: Settings) -> list[Path]:
    """The local folders a stored object takes room in: the spool, the blob folder of a
    file:// store, the folder of a SQLite index (nubis.services.disk_floor)."""
    return list(_watched_folders(settings).values())


def _watched_folders(settings: Settings) -> dict[str, Path]:
    """The folders whose free space /metrics reports, by their role (nubis.services.gauges)."""
    folders = {"spool": settings.spool_dir}
    blobs, index = urlparse(settings.blobs_url), urlparse(settings.index_url)
    if blobs.scheme == "file":
        folders["blobs"] = Path(unquote(blobs.path))
    if index.scheme == "sqlite":  # sqlite:///relative/file or sqlite:////absolute/file
        folders["index"] = Path(unquote(index.path.removeprefix("/"))).parent
    return folders


@dataclass(frozen=True)
class _Attempt:
    """A login attempt, as the audit builders read principals."""

    user_id: str
    peer: str | None


class Archive(ArchiveJobs):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = Index(settings.index_url, durable=settings.durable)
        if settings.replicate_to:
            # Every change of the tenant is queued for the replica in its own commit.
            self.index.replicated_partition = settings.replicate_tenant
            self.index.replicate_delete_delay_ms = settings.replicate_delete_delay_days * 86400_000
        # Every change goes into the change feed in its own commit (nubis.index.feed_sql).
        self.index.change_feed = settings.change_feed
        self.tiers = parse_tiers(settings.tiers)
        self.keys, self.blobs = _blob_store(settings, self.tiers, self.index)
        # Ingest stops while a disk it writes to is below min_free_disk.
        self.floor = DiskFloor(_ingest_folders(settings), parse_floor(settings.min_free_disk))
        # A sealed spool is encrypted as it arrives: plaintext never reaches the disk.
        self.spool = Spool(settings.spool_dir, sealed=settings.encrypt_at_rest, floor=self.floor)
        # Services record every access here (fail closed: see nubis.security.audit).
        self.audit = AuditTrail(
            self.index,
            key_path=settings.audit_key_path,
            source_id=settings.audit_source,
            checkpoint_every=settings.audit_checkpoint_records,
            checkpoint_seconds=settings.audit_checkpoint_seconds,
            enabled=settings.audit_trail,
            read_flush_ms=settings.audit_read_flush_ms,
            read_max_pending=settings.audit_read_max_pending,
        )
        # Every service decides with the same policy and records through the same trail, so
        # DICOMweb, DIMSE and the CLI obey one rule (nubis.services.guard).
        self.policy = AuthPolicy(break_glass_roles=parse_roles(settings.break_glass_roles))
        self.guard = Guard(self.policy, self.audit if settings.audit_trail else None)
        if settings.replica_of:
            # A read-only replica until promoted (nubis.services.replica_role).
            self.guard.replica = ReplicaRole(
                self.index, settings.replica_of, settings.replica_writer
            )
        self.users = UserStore(self.index)
        self.throttle = LoginThrottle(
            self.index,
            ThrottlePolicy(
                max_failures_per_user=settings.login_max_failures_per_user,
                max_failures_per_address=settings.login_max_failures_per_address,
                window_seconds=settings.login_failure_window_seconds,
                lockout_seconds=settings.login_lockout_seconds,
                max_lockout_seconds=settings.login_max_lockout_seconds,
            ),
            on_lockout=self._lockout_started,
        )
        self.sessions = SessionStore(
            self.index,
            idle_seconds=settings.session_idle_minutes * 60,
            max_seconds=settings.session_max_hours * 3600,
        )
        self.authn = Authenticator(self.users, OidcVerifier.from_settings(settings), self.throttle)
        # Users and keys as the admin pages and `nubis users` manage them: authorized, audited.
        self.accounts = Accounts(
            self.users, self.guard, self.sessions, api_key_days=settings.api_key_days
        )
        self.store = StoreService(
            self.index,
            self.blobs,
            guard=self.guard,
            overwrite=settings.on_conflict == "overwrite",
            bulk_threshold=settings.bulk_threshold,
            floor=self.floor,
            patient_conflict=settings.patient_conflict,
        )
        # Last reads feed the lifecycle rules (unread>30d -> cold).
        self.reads = ReadTracker(self.index, every_seconds=settings.read_record_seconds)
        self.retrieve = RetrieveService(
            self.index,
            # An edge node reads what it evicted from the cloud archive (docs/edge.md).
            ReadThroughStore(self.blobs, self.cloud) if self.cloud is not None else self.blobs,
            guard=self.guard,
            verify_reads=settings.verify_reads,
            on_read=self.reads.touch,
        )
        self.query = QueryService(self.index, self.guard)
        self.changefeed = ChangeFeedService(self.index, self.guard)
        self.webhooks = WebhookService(self.index, self.guard, SecretBox(settings.webhook_key_path))
        # Corrections of patient and study attributes, kept as an overlay (docs/corrections.md).
        # With encryption at rest, a correction that changes a study's patient queues the
        # re-key of its objects (nubis.services.study_rekey).
        self.corrections = CorrectionService(
            self.index, self.guard, rekeys=isinstance(self.blobs, EncryptedBlobStore)
        )
        # What nobody may delete until released: DELETE, retention and shredding check it.
        self.legal_holds = LegalHolds(self.index, self.guard)
        # Every erasure (delete, retention, shred) leaves a certificate signed with the audit
        # trail's key, its digest named by the erasure's audit record (retention.certificates).
        certify = (
            Certifying(
                lambda: self.audit.key, redact_url(settings.blobs_url), _erasure_copies(settings)
            )
            if settings.audit_trail
            else None
        )
        # Crypto-shredding a patient, for the CLI and the admin API (a primary's replication).
        self.shredding = (
            ShredService(
                self.index,
                self.keys,
                self.guard,
                self.audit,
                self.query,
                self.corrections,
                max_studies=settings.qido_max_limit,
                holds=self.legal_holds,
                certify=certify,
            )
            if self.keys is not None
            else None
        )
        # Research projects and the researcher's de-identified view (docs/research.md); a
        # de-identified share link reads through the same view.
        self.research = ResearchService(
            self.index, self.guard, self.query, self.keys, max_limit=settings.qido_max_limit
        )
        self.sharing = SharingService(
            self.index,
            self.guard,
            self.query,
            self.users,
            self.sessions,
            self.throttle,
            self.research,
            default_days=settings.share_default_days,
            max_days=settings.share_max_days,
        )
        # ZIP downloads of the web face: read through retrieve, recorded as an Export too.
        self.export = ExportService(self.retrieve, self.guard)
        # Analytics (docs/analytics.md): Parquet metadata export and federated statistics.
        self.metadata_export = MetadataExport(
            self.index, self.guard, default_tier=self.tiers.default.name
        )
        self.aggregates = AggregateService(
            self.index, self.guard, min_cell=settings.aggregate_min_cell
        )
        self.quarantine = QuarantineService(self.index, guard=self.guard)
        self.research_view = ResearchView(
            self.research, self.sharing, self.retrieve, self.index, self.guard
        )
        # Workitems handed out and performed over UPS-RS (docs/worklists.md).
        self.worklist = WorklistService(self.index, self.guard)
        self.worklist_events = WorklistEvents(self.index, self.guard)
        self.maintenance = Maintenance(
            self.index,
            self.blobs,
            guard=self.guard,
            orphan_grace_seconds=settings.orphan_grace_seconds,
            certify=certify,
        )
        # Studies the retention rules let go, erased through maintenance (docs/retention.md).
        rules = load_rules(settings.retention_rules_path)
        self.retention = Retention(
            self.index,
            self.guard,
            self.maintenance,
            self.legal_holds,
            lambda: rules,
            automatic=settings.retention_approval == "automatic",
            public_keys=lambda: {self.audit.key.key_id: self.audit.key.public},
        )
        mover = find_mover(self.blobs)
        # Tiers that keep their objects losslessly compressed (nubis.tiers.compression).
        compression = parse_compression(settings.tier_compression, self.tiers)
        self.lifecycle = Lifecycle(
            self.index,
            self.tiers,
            parse_rules(settings.lifecycle, self.tiers),
            mover,
            guard=self.guard,
            actor=system_participant(settings.audit_source),
            compressor=TierCompressor(
                self.index,
                self.blobs,
                self.spool,
                guard=self.guard,
                tiers=self.tiers,
                policy=compression,
                mover=mover,
                bulk_threshold=settings.bulk_threshold,
                orphan_grace_seconds=settings.orphan_grace_seconds,
            )
            if compression
            else None,
        )
        # Re-wraps objects off an old KEK (nubis keys retire --rewrap), and re-keys corrected
        # studies under their new patient's key: always through a sealed spool, even where new
        # objects are no longer encrypted, so no plaintext lands on disk.
        self.rewrap: KekRewrap | None = None
        self.rekey: StudyRekey | None = None
        if isinstance(self.blobs, EncryptedBlobStore):
            reencryption: dict[str, Any] = {
                "guard": self.guard,
                "tiers": self.tiers,
                "mover": self.lifecycle.mover,
                "actor": system_participant(settings.audit_source),
                "orphan_grace_seconds": settings.orphan_grace_seconds,
            }
            sealed = Spool(settings.spool_dir, sealed=True)
            self.rewrap = KekRewrap(self.index, self.blobs, sealed, **reencryption)
            self.rekey = StudyRekey(self.index, self.blobs, sealed, **reencryption)
        self.jobs = JobStore(self.index)
        self.job_runner = self.new_job_runner() if settings.jobs else None
        if self.job_runner is not None:
            self.corrections.wake = self.job_runner.wake  # a re-key starts at once
            if settings.change_feed and settings.webhook_wake_ms:
                runner = self.job_runner
                self.index.on_feed_change = lambda: runner.request(WEBHOOKS)
        # Jobs, storage and DIMSE peers as the admin pages manage them: the home tenant's.
        self.operations = Operations(
            self.index,
            self.guard,
            self.jobs,
            tiers=self.tiers,
            prices=parse_prices(settings.storage_prices, self.tiers),
            peers=PeerTable(self.index, settings.dimse_peers_cache_seconds),
            wake=self.job_runner.wake if self.job_runner is not None else None,
        )
        self.gauges = ArchiveGauges(
            self.index,
            self.guard,
            self.tiers,
            folders=_watched_folders(settings),
            replicating=bool(settings.replicate_to),
        )
        self.imaging_studies = ImagingStudies(self.query)
        self.audit_log = AuditLog(
            self.audit,
            self.guard,
            self.jobs,
            wake=self.job_runner.wake if self.job_runner is not None else None,
        )
        self.audit_forwarder = (
            SyslogForwarder(
                self.audit,
                settings.audit_syslog,
                ca_file=settings.audit_syslog_ca,
                cert_file=settings.audit_syslog_cert,
                key_file=settings.audit_syslog_key,
                # Every worker process starts one; the lock lets exactly one of them forward.
                lock_path=settings.data_dir / "audit-syslog.lock",
            )
            if settings.audit_syslog
            else None
        )
        self.first_login_key: str | None = None
        self.ready = False

    @cached_property
    def cloud(self) -> CloudArchive | None:
        """An edge node's cloud archive (forward_to), read back from with the same service
        credential it forwards with; None when this is not an edge node."""
        settings = self.settings
        if not settings.forward_to:
            return None
        return CloudArchive(
            settings.forward_to, settings.replicate_api_key, settings.spool_dir / "cloud"
        )

    def _lockout_started(self, lockout: Lockout) -> None:
        """Log and audit the start of a login lockout (nothing more is recorded while it lasts:
        a locked attempt must cost nothing)."""
        what = f"{'user name' if lockout.kind == 'user' else 'address'} {lockout.subject}"
        description = (
            f"password logins of {what} locked for {lockout.seconds} s after "
            f"{lockout.failures} failed within {self.settings.login_failure_window_seconds} s"
        )
        log.warning("%s (last tried: user %s from %s)", description, lockout.user, lockout.address)
        self.guard.record(
            audit_events.login_lockout(
                _Attempt(lockout.user, lockout.address),
                user_locked=lockout.kind == "user",
                description=description,
                front_door=lockout.front_door,
            )
        )

    @property
    def dimse_enabled(self) -> bool:
        return bool(self.settings.dimse_port or self.settings.dimse_tls_cert)

    def prepare(self) -> None:
        """One-time work before any process serves: schema migration, spool and blob cleanup.

        Runs in the parent before HTTP worker processes start, so no worker can clear a spool
        file another worker is still writing.
        """
        self.index.migrate()
        self.index.open()
        self.forget_shredded_keys()
        self.first_login_key = self._bootstrap_identity()
        self._import_dimse_peer_file()
        leftovers = self.spool.clear()
        if leftovers:
            log.info("removed %d spool file(s) left by an interrupted run", leftovers)
        try:
            report = self.maintenance.reap()
        except StorageUnavailable as exc:
            # A remote blob store that is down now must not keep the node from starting: stores
            # answer 503 until it is back, and the background reaper tries again.
            log.warning("blob store unavailable, reaping skipped: %s", exc.reason)
            self.index.close()
            return
        if report.orphans_deleted or report.doomed_deleted:
            log.info(
                "reaped %d orphan and %d deleted blob(s)",
                report.orphans_deleted,
                report.doomed_deleted,
            )
        self.index.close()

    def forget_shredded_keys(self) -> int:
        """Shred again the keys a local keyring holds that the index records as shredded (a
        keyring put back from a copy older than the shred: nubis.crypto.local_keys), and
        record it: the shred list in the index, not the keyring file, says who is erased.
        The index must be open. Returns how many keys were shredded again."""
        from nubis.crypto.local_keys import LocalKeyring
        from nubis.model.audit import EventOutcome, EventType

        if not isinstance(self.keys, LocalKeyring):
            return 0
        again = self.keys.forget_erased()
        if again:
            self.guard.record(
                audit_events.security_alert(
                    system_participant(self.settings.audit_source),
                    EventType.SECURITY_CONFIGURATION,
                    outcome=EventOutcome.SUCCESS,
                    description=f"the keyring held {len(again)} patient key(s) the index "
                    f"records as shredded (a copy older than the shred): shredded again",
                    front_door="system",
                )
            )
        return len(again)

    def record_application(self, *, started: bool) -> None:
        """Application Start or Stop (PS3.15 A.5.3.1) of ``nubis serve``, from its parent
        process, once per server rather than per worker; fails closed like any record."""
        self.index.open()
        try:
            self.guard.record(
                audit_events.application_activity(
                    system_participant(self.settings.audit_source), started=started
                )
            )
        finally:
            self.index.close()

    def _import_dimse_peer_file(self) -> None:
        """Earlier versions kept the DIMSE peers in a file per node; bring its entries into the
        index table once, so existing set-ups keep their peers (see dimse/peers.py)."""
        from nubis.dimse.peers import PeerError, PeerTable, import_legacy_file

        try:
            import_legacy_file(PeerTable(self.index), self.settings.dimse_peers_path)
        except PeerError as exc:
            # The file stays where it is; the node serves with the table as it is.
            log.error("%s (not imported; fix it or use nubis dimse peers import)", exc)

    def _bootstrap_identity(self) -> str | None:
        """Apply admin_token, and on a fresh archive make the first admin key (returned once,
        for ``nubis serve`` to print; only its hash is kept)."""
        self.users.ensure_admin_token(self.settings.admin_token)
        if not self.settings.auth:
            return None
        return self.users.bootstrap()

    def start(self, *, background: bool = True) -> None:
        """Open for traffic (in each worker process); ``background`` also runs jobs (or the
        reaper), which a short-lived CLI command such as ``nubis import`` leaves to servers."""
        self.index.open()
        self.audit.open()
        if self.audit_forwarder is not None:
            self.audit_forwarder.start()
        self.reads.start()
        if background and self.job_runner is not None:
            self.job_runner.start()  # the reap job replaces the in-process reaper
            self._snapshot_storage_today()
        elif background:
            self.maintenance.start_background()
        self.ready = True

    def _snapshot_storage_today(self) -> None:
        """Queue today's storage snapshot unless it was taken (nubis.tiers.history): the admin
        pages' charts then have a point for every day a server ran, whatever jobs_schedule
        says. Under the daily schedule's own unique key, so the two make one job a day."""
        if not snapshots(self.index, days=1):
            self.jobs.schedule(SNAPSHOT, 86400)

    def stop(self) -> None:
        self.ready = False
        if self.job_runner is not None:
            self.job_runner.stop()  # a running job goes back to the queue for another node
        self.maintenance.stop_background()
        self.reads.stop()
        if self.audit_forwarder is not None:
            self.audit_forwarder.stop()
        self.audit.close()  # signs the unsigned tail while the index can still write
        self.index.close()

    def __enter__(self) -> Archive:
        self.prepare()
        self.start(background=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
