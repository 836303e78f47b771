"""The kinds of job nubis runs (their schedule setting: nubis.jobs.schedule).

- ``reap``: delete blobs of deleted instances and orphan blobs (nubis.services.maintenance);
  parameter ``grace_seconds``.
- ``verify``: re-read blobs and check their SHA-256 (nubis.jobs.verify), healing damaged ones
  from the ``heal_from`` backup folders (nubis.jobs.heal); parameter ``heal=false`` only reports.
- ``tier``: apply the lifecycle rules (nubis.tiers.lifecycle); parameters ``partition`` and
  ``study`` to move one study (``nubis storage tier``).
- ``rewrap``: re-encrypt every stored object whose header names an old key-encryption key so
  that it names the current one (nubis.services.kek_rewrap); parameter ``kek_id`` (``nubis keys
  retire KEK --rewrap``). Only nodes of an encrypted archive run it, and it is never scheduled.
- ``rekey``: re-encrypt the objects of studies a correction filed under another patient under
  that patient's key (nubis.services.study_rekey). Queued by the correction (or by a late
  object of a moved study) in its own transaction; ``nubis jobs run rekey`` runs it again for
  studies it left (objects awaiting a restore). Where nothing is encrypted it only forgets them.
- ``commitment-report``: deliver a Storage Commitment N-EVENT-REPORT (nubis.dimse.commitment);
  parameters ``calling_ae``, ``partition``, ``transaction_uid``, ``references``. Queued by the
  DIMSE server for each N-ACTION, retried on its own backoff until delivered or given up.
- ``storage-snapshot``: keep today's objects and bytes per tier (nubis.tiers.history), for the
  admin pages' charts of storage and cost over time; daily by default, and queued at start.
- ``audit-verify``: check the audit trail's hash chain and signed checkpoints, and the erasure
  certificates, as ``nubis audit verify`` does (recorded as Audit Log Used, a broken chain as
  a Security Alert); the result is the report the admin pages show. Add ``audit-verify=1d``
  to jobs_schedule to run it daily.
- ``dimse-send``: send a study or series to a DIMSE peer for the person who asked (the web
  face's Send, nubis.dimse.send); parameters ``who``, ``study``, ``series``, ``destination``.
  Tried once.
- ``migrate``: move a legacy archive in (nubis.migrate.job); parameters those of
  nubis.migrate.request.MigrationRequest. Run only by the ``nubis migrate run`` process that
  queued it (its C-MOVE receiver and the source's credentials are that process's), which a
  second run resumes; servers' runners leave it alone.
- ``backup``: back the archive up into a folder (nubis.backup.job); parameter ``to``. Run only
  by the ``nubis backup`` process that queued it, as ``migrate`` is.
- ``retention``: list, or with an admin's approval erase, the studies the retention rules let
  go (nubis.services.retention); parameters ``dry_run``, ``approve`` (``nubis retention run``:
  the job's creator approves), ``today`` (YYYY-MM-DD, for a review of a later day). A
  scheduled run (``retention=1d`` in jobs_schedule) only lists unless retention_approval is
  automatic. Legal holds are skipped and reported; every erasure leaves a certificate.
- ``research-export``: write a research project's de-identified objects and manifest into a
  folder or zip, or send them to a DICOMweb server or an S3 bucket
  (nubis.services.research_export); parameters ``project``, ``tenant``, and ``to``, ``zip``,
  or ``dicomweb`` or ``s3`` with ``manifest``. Run only by
  the ``nubis research export`` process that queued it, as ``backup`` is.
- ``replicate``: send the replication outbox to the replica (nubis.replication.job); no
  parameters (the replica's credential is a setting, never a job's). Queued every
  replicate_every_seconds by nodes with replicate_to set; one run at a time drains.
- ``edge-evict``: on an edge node (forward_to), delete the local blobs of studies the cloud
  confirmed and the keep rules let go (nubis.edge.evict); no parameters. Queued every
  edge_evict_every_seconds by nodes with forward_to set.
- ``analyze-scan``: queue an ``analyze`` job for each stable study an analyzer of the
  ``analyzers`` setting has not analyzed (nubis.analyzers.job); queued every
  analyzer_scan_seconds while that setting names any.
- ``analyze``: run one analyzer on one study and store its results in the study
  (nubis.analyzers.job); parameters ``analyzer``, ``study``, ``partition`` (default
  ``default``). Retried up to 3 times; waits for a free concurrency slot of its analyzer.
- ``webhooks``: deliver the change feed to the webhook subscriptions (nubis.events.delivery);
  no parameters. Queued every webhook_every_seconds while change_feed is on and a
  subscription exists.
- ``changefeed-expire``: remove change-feed entries older than change_feed_retention_days
  (nubis.services.changefeed); daily (or as jobs_schedule says) while an entry is that old.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete

from nubis.index.database import Index
from nubis.index.rekey_sql import KIND as REKEY
from nubis.index.schema import study_rekeys
from nubis.jobs.context import Handler, JobContext
from nubis.jobs.heal import Healer
from nubis.jobs.schedule import (
    ANALYZE_SCAN,
    AUDIT_VERIFY,
    CHANGEFEED_EXPIRE,
    EDGE_EVICT,
    REPLICATE,
    RETENTION,
    SNAPSHOT,
    WEBHOOKS,
)
from nubis.jobs.verify import verify
from nubis.model.audit import ActiveParticipant
from nubis.ports.blobs import BlobStore
from nubis.services.guard import Guard
from nubis.services.kek_rewrap import KekRewrap
from nubis.services.maintenance import Maintenance
from nubis.services.study_rekey import StudyRekey
from nubis.tiers.history import take_snapshot
from nubis.tiers.lifecycle import Lifecycle
from nubis.tiers.rules import Tiers

if TYPE_CHECKING:
    from nubis.retention.certificates import CertificateCheck
    from nubis.security.audit import AuditTrail

__all__ = ["KINDS", "handlers", "parse_params"]

KINDS = (
    "reap",
    "verify",
    "tier",
    "rewrap",
    REKEY,
    SNAPSHOT,
    AUDIT_VERIFY,
    WEBHOOKS,
    CHANGEFEED_EXPIRE,
    ANALYZE_SCAN,
    "analyze",
    RETENTION,
)


def parse_params(items: list[str]) -> dict[str, Any]:
    """Job parameters from ``NAME=VALUE`` items: true/false, integers and numbers become
    such, anything else stays text; ValueError names an item without ``=``."""
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"parameter {item!r}: expected NAME=VALUE")
        value: Any = text.strip()
        if value.lower() in {"true", "false"}:
            value = value.lower() == "true"
        else:
            for convert in (int, float):
                try:
                    value = convert(value)
                    break
                except ValueError:
                    continue
        params[name.strip()] = value
    return params


def handlers(
    *,
    index: Index,
    blobs: BlobStore,
    maintenance: Maintenance,
    lifecycle: Lifecycle,
    tiers: Tiers,
    rewrap: KekRewrap | None = None,
    rekey: StudyRekey | None = None,
    guard: Guard | None = None,
    actor: ActiveParticipant | None = None,
    commitment: Handler | None = None,
    audit: AuditTrail | None = None,
    dimse_send: Handler | None = None,
    healer: Callable[[], Healer | None] | None = None,
    replicate: Handler | None = None,
    edge_evict: Handler | None = None,
    analyze: tuple[Handler, Handler] | None = None,
    webhooks: Handler | None = None,
    changefeed_expire: Handler | None = None,
    retention: Handler | None = None,
    certificate_checks: Callable[[], list[CertificateCheck]] | None = None,
) -> dict[str, Handler]:
    """The handler of each kind this node can run (``rewrap`` only with encryption at rest,
    ``rekey`` re-encrypting with it and only forgetting its studies without it,
    ``commitment-report``, ``audit-verify``, ``dimse-send``, ``replicate``, ``edge-evict``,
    ``webhooks``, ``changefeed-expire``, ``retention`` and ``analyze`` (the scan's and the
    analysis' handlers) when given);
    ``guard`` records what ``verify`` reads and heals, as ``actor`` (``audit-verify`` records
    its own use of the log, as ``actor``); ``healer`` gives each ``verify`` run its healer;
    ``certificate_checks`` verifies the erasure certificates with the chain (``audit-verify``)."""

    def reap(ctx: JobContext) -> dict[str, Any]:
        grace = ctx.params.get("grace_seconds")
        doomed = maintenance.reap_doomed()
        orphans = maintenance.reap_orphans(
            None if grace is None else int(grace), progress=lambda listed: ctx.progress(listed)
        )
        return {"doomed_deleted": doomed, "orphans_deleted": orphans}

    def check(ctx: JobContext) -> dict[str, Any]:
        return verify(ctx, index, blobs, tiers, guard=guard, actor=actor, healer=healer)

    def tier(ctx: JobContext) -> dict[str, Any]:
        return lifecycle.run(
            ctx, partition=ctx.params.get("partition"), study_uid=ctx.params.get("study")
        )

    def snapshot(ctx: JobContext) -> dict[str, Any]:
        return take_snapshot(index, tiers)

    kinds: dict[str, Handler] = {"reap": reap, "verify": check, "tier": tier, SNAPSHOT: snapshot}
    if audit is not None:
        trail = audit

        def verify_audit(ctx: JobContext) -> dict[str, Any]:
            who: Any = ctx.job.created_by or "unknown"
            if actor is not None:
                who = replace(actor, user_name=ctx.job.created_by)
            total = trail.head()[0]
            ctx.progress(0, total)
            report = trail.verify(
                used_by=who, front_door="system", progress=lambda n: ctx.progress(n, total)
            )
            checks = certificate_checks() if certificate_checks is not None else []
            forged = [c.id for c in checks if not c.ok]
            return {
                "ok": report.ok and not forged,
                "certificates": len(checks),
                "certificates_failed": forged,
                "records": report.records,
                "checkpoints": report.checkpoints,
                "last_signed_seq": report.last_signed_seq,
                "unsigned": report.unsigned,
                "first_bad_seq": report.first_bad_seq,
                "problem": report.problem,
            }

        kinds[AUDIT_VERIFY] = verify_audit
    if rewrap is not None:
        kinds["rewrap"] = rewrap.run
    if rekey is not None:
        kinds[REKEY] = rekey.run
    else:

        def nothing_encrypted(ctx: JobContext) -> dict[str, Any]:
            # No keyring: no object is under any patient's key, so none awaits re-keying.
            forgotten = index.write(lambda conn: conn.execute(delete(study_rekeys)).rowcount)
            return {"studies_forgotten": forgotten}

        kinds[REKEY] = nothing_encrypted
    if commitment is not None:
        kinds["commitment-report"] = commitment
    if dimse_send is not None:
        kinds["dimse-send"] = dimse_send
    if replicate is not None:
        kinds[REPLICATE] = replicate
    if edge_evict is not None:
        kinds[EDGE_EVICT] = edge_evict
    if retention is not None:
        kinds[RETENTION] = retention
    if analyze is not None:
        kinds[ANALYZE_SCAN], kinds["analyze"] = analyze
    if webhooks is not None:
        kinds[WEBHOOKS] = webhooks
    if changefeed_expire is not None:
        kinds[CHANGEFEED_EXPIRE] = changefeed_expire
    return kinds
