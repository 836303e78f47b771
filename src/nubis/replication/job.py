"""The ``replicate`` job: apply the outbox to the replica, in order per study, verified.

Each run takes the drain lease (one run at a time across every node and worker, so a study's
entries are never applied by two at once), then repeatedly picks the studies whose first entry
is due and applies each study's entries in ``seq`` order (a run of consecutive stores
STORES_AT_ONCE at a time, since stores commute; anything else after all before it): a store is
read through
:class:`~nubis.services.retrieve.RetrieveService` as the principal ``replicate:<tenant>`` (so
it is authorized, read with its digest checked, and recorded as DICOM Instances Transferred)
and sent with its SHA-256 (nubis.replication.target); a delete is sent as a delete, a
correction as the update of the study it left, a crypto-shred as the shred of the patient's
keys there; a move between storage tiers is only retired (the replica keeps its own tiers,
by its own rules). An entry
is deleted from the outbox only once the replica confirmed it, so a crash anywhere repeats it
at worst (at-least-once; the replica answers a repeat as already stored or already gone). On
an edge node the commit that retires a store also records the digest the cloud verified
(nubis.index.edge_sql.confirmed), which eviction waits for (docs/edge.md).

A refusal stops that study's later entries, which wait behind it with a backoff doubling from
1 s up to replicate_retry_max_seconds; after MAX_REFUSALS it is parked for an operator
(``nubis replication retry``). A replica that cannot be reached stops the pass, and the run
probes it with the same backoff. After the outbox has stayed empty for LINGER_SECONDS the run
ends; the schedule (replicate_every_seconds) starts the next.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Connection

from nubis.errors import KeyErased, NotFound, NubisError
from nubis.index import edge_sql, outbox_sql
from nubis.index.database import Index
from nubis.index.outbox_sql import Entry
from nubis.jobs.context import JobContext
from nubis.jobs.schedule import REPLICATE
from nubis.jobs.store import JobStore, now_ms
from nubis.model.records import StoredInstance
from nubis.replication.target import DicomWebReplica, ReplicaRefused, ReplicaUnreachable
from nubis.security.policy import Principal
from nubis.services.retrieve import RetrieveService

__all__ = ["KIND", "LINGER_SECONDS", "MAX_REFUSALS", "STORES_AT_ONCE", "Replicator"]

log = logging.getLogger(__name__)

KIND = REPLICATE
# A run keeps watching an empty outbox this long before it ends, so a new change leaves
# within POLL_SECONDS rather than at the next scheduled run.
LINGER_SECONDS = 30.0
POLL_SECONDS = 0.2
MAX_REFUSALS = 10
# Stores of one study sent at once: the replica's group commit then syncs them together, and
# the sends overlap their reads, transfers and writes (bench/replication_lag.py).
STORES_AT_ONCE = 4
_LEASE_SECONDS = 300.0
_STUDIES_PER_PASS = 100
_ENTRIES_PER_STUDY = 500
# Finished runs are many (one per idle period) and say little: kept an hour, not 30 days.
_KEEP_RUNS_MS = 3600 * 1000


class Replicator:
    def __init__(
        self,
        index: Index,
        retrieve: RetrieveService,
        jobs: JobStore,
        replica: DicomWebReplica,
        *,
        retry_max_seconds: int,
        linger_seconds: float = LINGER_SECONDS,
        confirm_copies: bool = False,
    ) -> None:
        """``confirm_copies``: record each object the replica verified (an edge node's
        eviction waits for it, docs/edge.md)."""
        self.index = index
        self.retrieve = retrieve
        self.jobs = jobs
        self.replica = replica
        self.retry_max_seconds = retry_max_seconds
        self.linger_seconds = linger_seconds
        self.confirm_copies = confirm_copies
        self._senders = ThreadPoolExecutor(STORES_AT_ONCE, thread_name_prefix="nubis-replicate")

    def run(self, ctx: JobContext) -> dict[str, Any]:
        owner = f"job-{ctx.job.id}"
        if not self._lease(owner):
            return {"skipped": "another replicate job is draining the outbox"}
        applied = unreachable = 0
        try:
            idle_since = time.monotonic()
            pause = 0.0
            while time.monotonic() - idle_since < self.linger_seconds:
                ctx.check()
                try:
                    done = self._pass(ctx, owner)
                except ReplicaUnreachable as exc:
                    unreachable += 1
                    pause = min(max(1.0, pause * 2), float(self.retry_max_seconds))
                    log.warning("replication paused %.0f s: %s", pause, exc)
                    self._sleep(ctx, pause)
                    continue
                pause = 0.0
                if done:
                    applied += done
                    ctx.progress(applied)
                    idle_since = time.monotonic()
                else:
                    self._sleep(ctx, POLL_SECONDS)
        finally:
            self.index.write(lambda conn: outbox_sql.release_lease(conn, owner))
        self.jobs.prune(now_ms() - _KEEP_RUNS_MS, kind=KIND)
        return {"applied": applied, "unreachable": unreachable}

    def _lease(self, owner: str) -> bool:
        return self.index.write(
            lambda conn: outbox_sql.take_lease(conn, owner, now_ms(), _LEASE_SECONDS)
        )

    @staticmethod
    def _sleep(ctx: JobContext, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ctx.check()
            time.sleep(min(left, POLL_SECONDS))

    def _pass(self, ctx: JobContext, owner: str) -> int:
        """Apply what is due now; how many entries. ReplicaUnreachable stops the pass."""
        now = now_ms()
        with self.index.reading() as conn:
            studies = outbox_sql.due_studies(conn, now, _STUDIES_PER_PASS)
        applied = 0
        for partition, study_uid in studies:
            ctx.check()
            if not self._lease(owner):
                raise ReplicaUnreachable("the drain lease was lost to another run")
            with self.index.reading() as conn:
                entries = outbox_sql.entries_of(conn, partition, study_uid, _ENTRIES_PER_STUDY)
            applied += self._apply_study(entries)
        return applied

    def _apply_study(self, entries: list[Entry]) -> int:
        """Apply one study's entries in order; how many. A run of consecutive stores goes
        out STORES_AT_ONCE at a time (stores commute: each sends the object as it is now);
        anything else waits until every entry before it is applied."""
        applied = 0
        i = 0
        while i < len(entries):
            if entries[i].due_at > now_ms():
                break  # a delete held back: the study's later entries wait behind it
            run = [entries[i]]
            while (
                run[0].op == outbox_sql.STORE
                and len(run) < STORES_AT_ONCE
                and i + len(run) < len(entries)
                and entries[i + len(run)].op == outbox_sql.STORE
            ):
                run.append(entries[i + len(run)])
            done = self._apply_run(run)
            applied += done
            if done < len(run):
                break  # refused: the study's later entries wait behind it
            i += len(run)
        return applied

    def _apply_run(self, run: list[Entry]) -> int:
        """Apply ``run`` (one entry, or stores at once); how many were applied. An
        unreachable replica is raised once every send of the run has ended."""
        if len(run) == 1:
            return int(self._apply_one(run[0]))
        futures = [self._senders.submit(self._apply_one, entry) for entry in run]
        results = [future.exception() or future.result() for future in futures]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(1 for result in results if result is True)

    def _apply_one(self, entry: Entry) -> bool:
        """Apply ``entry`` and retire it; False when the replica refused it (it waits)."""
        try:
            sent = self._apply(entry)
        except ReplicaUnreachable as exc:
            self._failed(entry, str(exc), park=False)
            raise
        except (ReplicaRefused, NubisError) as exc:
            reason = getattr(exc, "reason", None) or str(exc)
            park = entry.attempts + 1 >= MAX_REFUSALS
            log.warning(
                "replication of outbox entry %d (%s) refused%s: %s",
                entry.seq, entry.op, ", parked" if park else "", reason,
            )  # fmt: skip
            self._failed(entry, reason, park=park)
            return False

        def retire(conn: Connection) -> None:
            now = now_ms()
            outbox_sql.replicated(conn, entry.seq, now)
            if sent is not None and self.confirm_copies:
                # The confirmation an edge node evicts by (docs/edge.md), in the same commit.
                edge_sql.confirmed(conn, sent.pk, sent.sha256, now)

        self.index.write(retire)
        return True

    def _failed(self, entry: Entry, reason: str, *, park: bool) -> None:
        now = now_ms()
        delay = min(2**entry.attempts, self.retry_max_seconds) * 1000
        text = f"entry {entry.seq} ({entry.op} in study {entry.study_uid}): {reason}"[:500]
        self.index.write(
            lambda conn: outbox_sql.failed(conn, entry.seq, text, now, now + delay, park=park)
        )

    def _apply(self, entry: Entry) -> StoredInstance | None:
        """Apply ``entry``; the instance whose bytes the replica verified, for a store."""
        if entry.op == outbox_sql.DELETE:
            self.replica.delete(entry.study_uid, entry.series_uid, entry.sop_instance_uid)
            return None
        if entry.op == outbox_sql.TIER:
            return None  # recorded, not applied: the replica's tiers follow its own rules
        detail = json.loads(entry.detail or "{}")
        if entry.op == outbox_sql.CORRECT:
            self.replica.correct(
                entry.study_uid, detail["correction"], detail["reason"], detail["set"]
            )
            return None
        if entry.op == outbox_sql.SHRED:
            self.replica.shred(detail["patient"])
            return None
        who = replication_principal(entry.partition)
        try:
            found = self.retrieve.instances(
                who, entry.study_uid, entry.series_uid, entry.sop_instance_uid
            )
        except NotFound:
            return None  # deleted since: the delete's own entry follows in this study's order
        inst = found[0]
        try:
            self.replica.store(
                inst.study_uid,
                inst.sop_instance_uid,
                inst.size,
                inst.sha256,
                self.retrieve.stored_chunks(inst),
            )
        except KeyErased:
            # Shredded since: it must not reach the replica readable; the shred's own entry
            # follows in this study's order (the request was cut off mid-body, nothing stored).
            return None
        return inst


def replication_principal(tenant: str) -> Principal:
    """The service account the job reads as: every study of its tenant, those held in
    quarantine included (an admin's scope), recorded as ``replicate:<tenant>``."""
    return Principal(
        f"replicate:{tenant}", tenant, frozenset({"admin"}), via="system", auth_method="system"
    )
