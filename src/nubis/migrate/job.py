"""The ``migrate`` job: list the source's studies, move what the archive lacks, keep the ledger.

Each study goes the same way, whether the job is new, resumed after its process was killed, or
a delta run (``since_last_run``):

1. The source lists the study's instances; the ledger records them.
2. The archive is asked what it holds of the study (``StoreService.holdings``, as the
   migration's principal: UIDs and digests only, a study held in quarantine included, so
   its objects are not moved again). An instance it holds with the SHA-256 the source gave
   for it before (or, where the source gives no digest, under its UID) is not moved again; one it
   holds whose digest was never compared is fetched again, so a different object under the
   same UID is found (the store refuses it, and the report says so).
3. The source delivers the rest one object at a time, each stored through
   ``StoreService.store`` as the migration's principal: the same authorization, checks and
   audit record as STOW-RS and C-STORE. The ledger takes the outcomes with the study's end.
4. What was wanted and not delivered is recorded missing, with the reason. The study is marked
   done and one DICOM Instances Transferred record (PS3.15 A.5.3.4) sums it up.

A study marked done by this same job is skipped on resume; a delta run skips studies done by
any run whose SOP Instance UIDs at the source have not changed (:meth:`_Run.plan`). Studies
run ``concurrency`` at a time; the byte rate and time windows of :mod:`nubis.migrate.throttle`
apply to all.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Set
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nubis.jobs.context import JobContext, JobStopped
from nubis.migrate.ledger import Ledger, Mark, Outcome, StudyState
from nubis.migrate.request import MigrationRequest, migration_principal
from nubis.migrate.source import ListingGap, Source, SourceInstance, SourceStudy
from nubis.migrate.sources import open_source
from nubis.migrate.throttle import RateLimiter, TimeWindows
from nubis.model.audit import EventOutcome
from nubis.security import audit_events
from nubis.security.policy import Principal
from nubis.services.guard import Guard
from nubis.services.spool import Spool, SpooledFile
from nubis.services.store import StoreOutcome, StoreService

__all__ = ["Migrator", "ProgressView"]

log = logging.getLogger(__name__)

_NOT_DELIVERED = "listed by the source but not delivered"
_MAX_LISTED_PROBLEMS = 100


@dataclass
class ProgressView:
    """What the CLI shows while the job runs: instances done of the total known so far."""

    done: int = 0
    total: int = 0
    studies_done: int = 0
    studies_total: int = 0
    moved_bytes: int = 0
    phase: str = "listing"


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: int = 0
    moved_bytes: int = 0
    stored: int = 0
    present: int = 0
    refused: int = 0
    missing: int = 0
    studies_done: int = 0
    studies_skipped: int = 0
    instances_skipped: int = 0
    unidentified: list[dict[str, Any]] = field(default_factory=list)


_Listed = TypeVar("_Listed", SourceStudy, SourceInstance)


def _first_of_each(items: Iterable[_Listed], skip: Set[str] = frozenset()) -> list[_Listed]:
    """``items`` without repeats of a UID (and without those in ``skip``), in their order."""
    seen, kept = set(skip), []
    for item in items:
        uid = item.study_uid if isinstance(item, SourceStudy) else item.sop_instance_uid
        if uid not in seen:
            seen.add(uid)
            kept.append(item)
    return kept


class Migrator:
    """Runs ``migrate`` jobs against the archive's services."""

    def __init__(
        self,
        *,
        store: StoreService,
        guard: Guard,
        spool: Spool,
        on_progress: Callable[[ProgressView], None] | None = None,
    ) -> None:
        self.store = store
        self.guard = guard
        self.spool = spool
        self.index = store.index
        self.on_progress = on_progress

    def run(self, ctx: JobContext, *, authorization: str | None = None) -> dict[str, Any]:
        request = MigrationRequest.from_params(ctx.params, authorization=authorization)
        who = migration_principal(request.name, request.tenant)
        decision = self.store.authorize(who)
        assert decision.scope is not None
        ledger = Ledger(self.index, request.name, decision.scope.partition)
        started = dt.datetime.now(dt.UTC)
        view = ProgressView()
        tally = _Tally()
        source = open_source(request, self.spool)
        try:
            self._report(view)
            # A source may list a study twice (Orthanc keeps one Study Instance UID under two
            # Patient IDs as two studies); its instance listing covers both.
            studies = _first_of_each(source.studies())
            ctx.check()
            run = _Run(self, ctx, request, who, ledger, source, tally)
            todo = run.plan(studies)
            view.phase = "moving"
            view.studies_total = len(studies)
            view.total = sum(s.instances or 0 for s in studies)
            self._drive(ctx, run, todo, view, tally)
        finally:
            source.close()
        elapsed = max(time.monotonic() - run.clock, 1e-6)
        result: dict[str, Any] = {
            "name": request.name,
            "source": source.description,
            "started_at": started.isoformat(timespec="seconds"),
            "studies": len(studies),
            "studies_moved": tally.studies_done,
            "studies_skipped": tally.studies_skipped,
            "instances_skipped": tally.instances_skipped,
            "instances_stored": tally.stored,
            "instances_present": tally.present,
            "instances_refused": tally.refused,
            "instances_missing": tally.missing,
            "bytes_moved": tally.moved_bytes,
            "seconds": round(elapsed, 3),
            "instances_per_second": round(tally.stored / elapsed, 2),
            "mb_per_second": round(tally.moved_bytes / elapsed / 1e6, 3),
            "listing_gaps": [{"what": g.what, "reason": g.reason} for g in source.gaps],
            "unidentified": tally.unidentified,
        }
        summary = getattr(source, "summary", None)
        if summary is not None:
            result.update(summary())
        return result

    def _drive(
        self,
        ctx: JobContext,
        run: _Run,
        todo: list[SourceStudy],
        view: ProgressView,
        tally: _Tally,
    ) -> None:
        """Run the studies on ``concurrency`` threads while this thread reports progress
        (and so learns of a cancel or a stop, which ends the run after the studies begun)."""
        run.clock = time.monotonic()
        view.done = tally.done
        with ThreadPoolExecutor(run.request.concurrency, thread_name_prefix="migrate") as pool:
            pending: set[Future[None]] = set()
            queue = iter(todo)
            try:
                while True:
                    while len(pending) < run.request.concurrency and not run.stop.is_set():
                        study = next(queue, None)
                        if study is None:
                            break
                        pending.add(pool.submit(run.study, study))
                    if not pending:
                        break
                    finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()  # a study that failed fails the attempt
                    with tally.lock:
                        view.done, view.moved_bytes = tally.done, tally.moved_bytes
                        view.studies_done = tally.studies_done + tally.studies_skipped
                    view.total = max(view.total, view.done)
                    self._report(view)
                    ctx.progress(view.done, view.total, {"studies_done": view.studies_done})
            except BaseException:
                run.stop.set()
                raise

    def _report(self, view: ProgressView) -> None:
        if self.on_progress is not None:
            self.on_progress(view)

    def present(self, who: Principal, study_uid: str) -> tuple[dict[str, str], str | None]:
        """{SOP Instance UID: SHA-256} of what the archive holds of the study, held in
        quarantine or not, and its patient ID for the audit record; asked of the store
        service, as the migration."""
        holdings = self.store.holdings(who, study_uid)
        return holdings.digests, holdings.patient_id


class _Run:
    """One attempt of one migration job."""

    def __init__(
        self,
        migrator: Migrator,
        ctx: JobContext,
        request: MigrationRequest,
        who: Principal,
        ledger: Ledger,
        source: Source,
        tally: _Tally,
    ) -> None:
        self.migrator = migrator
        self.ctx = ctx
        self.request = request
        self.who = who
        self.ledger = ledger
        self.source = source
        self.tally = tally
        self.rate = RateLimiter(
            request.max_mb_per_s * 1e6 if request.max_mb_per_s is not None else None
        )
        self.windows = TimeWindows(request.window)
        self.stop = threading.Event()
        self.clock = time.monotonic()
        # Studies of a delta run whose listing is compared with the ledger's first (plan).
        self.compare_first: set[str] = set()

    def plan(self, studies: list[SourceStudy]) -> list[SourceStudy]:
        """The studies this attempt works on; the others count as done.

        A delta run (``since_last_run``) works on a study an earlier run finished only when
        it may have changed. The source's study-level count is free (it came with the study
        listing): a count unlike the ledger's means a change. An equal count does not mean
        none (one instance deleted and another added, an object re-sent under a new UID), and
        no study-level attribute shows that; so such a study's SOP Instance UIDs are listed
        (one query at the source) and compared with the ledger's before anything else is done
        (:meth:`study`). An unchanged archive thus costs one instance query per study: the
        price of no silent gap, which ``date_from`` bounds to the recent studies."""
        known = {row.study_uid: row for row in self.ledger.studies()}
        todo = []
        for study in studies:
            row = known.get(study.study_uid)
            if row is None or row.state is not StudyState.DONE:
                todo.append(study)
                continue
            if row.job_id == self.ctx.job.id:  # resumed: done by this job before
                self._skipped(study.instances or row.source_count or 0)
                continue
            same_count = study.instances is None or row.source_count == study.instances
            if self.request.since_last_run and same_count:
                self.compare_first.add(study.study_uid)
            todo.append(study)
        return todo

    def _skipped(self, instances: int) -> None:
        with self.tally.lock:
            self.tally.studies_skipped += 1
            self.tally.instances_skipped += instances
            self.tally.done += instances

    def _check(self) -> None:
        if self.stop.is_set():
            raise JobStopped("the migration is stopping")

    def study(self, study: SourceStudy) -> None:
        self.windows.wait_open(self._check)
        self._check()
        uid = study.study_uid
        listed = self.source.instances(study)
        if uid in self.compare_first and (
            {i.sop_instance_uid for i in listed} == self.ledger.listing(uid)
        ):
            self._skipped(len(listed))
            return
        elsewhere = self.ledger.begin_study(study, listed)
        for sop in sorted(elsewhere):
            self.source.gaps.append(
                ListingGap(
                    f"SOP Instance UID {sop} in study {uid}",
                    "the source lists it in another study too; it is migrated with that one",
                )
            )
        listed = _first_of_each(listed, skip=elsewhere)
        holding, patient_id = self.migrator.present(self.who, uid)
        entries = {e.sop_instance_uid: e for e in self.ledger.entries(uid)}
        wanted: list[SourceInstance] = []
        # Outcomes are written with the study's end (one transaction): a study killed midway
        # loses them, and its resumption finds what was stored in the archive itself.
        marks: list[Mark] = []
        for instance in listed:
            sop = instance.sop_instance_uid
            entry = entries.get(sop)
            source_sha = entry.source_sha256 if entry is not None else None
            # Held under its UID is enough only where the source gives no digest to compare;
            # otherwise the object is fetched again unless its digest was seen to match.
            verified = source_sha == holding.get(sop) or (
                source_sha is None and not self.source.gives_bytes
            )
            if sop in holding and verified:
                if entry is None or entry.outcome not in (Outcome.STORED, Outcome.PRESENT):
                    marks.append(Mark(sop, uid, Outcome.PRESENT, series_uid=instance.series_uid))
            else:
                wanted.append(instance)
        counts = {"stored": 0, "refused": 0}
        # By SOP Instance UID: a source holding two objects under one UID delivers both, and
        # a refusal of either is kept (the ledger has one outcome per UID).
        delivered: dict[str, Mark] = {}
        # The patient of the study's audit record: the archive's, else the first object's.
        patients: list[str] = [] if patient_id is None else [patient_id]
        lock = threading.Lock()

        def deliver(spooled: SpooledFile) -> StoreOutcome:
            sha, size = spooled.sha256, spooled.size
            self.rate.take(size)
            # A study whose instances disagree on the patient, or whose series UID another
            # study holds, comes in held in quarantine (docs/security.md, "One study, one
            # patient"), not refused: nothing is lost.
            outcome = self.migrator.store.store(
                spooled, principal=self.who, patient_conflict="quarantine"
            )
            sop = outcome.sop_instance_uid
            with self.tally.lock:
                self.tally.done += 1
                self.tally.moved_bytes += size
            if sop is None:
                reason = outcome.error.reason if outcome.error else "no SOP Instance UID"
                with self.tally.lock:
                    if len(self.tally.unidentified) < _MAX_LISTED_PROBLEMS:
                        self.tally.unidentified.append({"study": uid, "reason": reason})
                return outcome
            mark = Mark(
                sop,
                outcome.study_uid or uid,
                Outcome.STORED if outcome.ok else Outcome.REFUSED,
                series_uid=outcome.series_uid,
                source_sha256=sha if self.source.gives_bytes else None,
                size=size,
                status=None if outcome.error is None else outcome.error.dimse_status,
                reason=None if outcome.error is None else outcome.error.reason,
            )
            with lock:
                counts["stored" if outcome.ok else "refused"] += 1
                if outcome.ok and outcome.patient_id is not None and not patients:
                    patients.append(outcome.patient_id)
                if sop not in delivered or delivered[sop].outcome is not Outcome.REFUSED:
                    delivered[sop] = mark
            return outcome

        reasons = self.source.fetch(study, wanted, deliver) if wanted else {}
        marks.extend(delivered.values())
        missing = [i for i in wanted if i.sop_instance_uid not in delivered]
        marks.extend(
            Mark(
                instance.sop_instance_uid,
                uid,
                Outcome.MISSING,
                series_uid=instance.series_uid,
                reason=reasons.get(instance.sop_instance_uid, _NOT_DELIVERED),
            )
            for instance in missing
        )
        present = len(listed) - len(wanted)
        with lock:
            # The study's record commits with its ledger rows: one write, not two.
            record = (
                self._record(
                    study, counts, present, len(missing), patients[0] if patients else None
                )
                if wanted
                else None
            )
            self.ledger.write(marks, finished=(uid, self.ctx.job.id), also=record)
        with self.tally.lock:
            self.tally.stored += counts["stored"]
            self.tally.refused += counts["refused"]
            self.tally.missing += len(missing)
            self.tally.present += present
            self.tally.studies_done += 1
            # Every listed instance is now done, delivered or not.
            self.tally.done += max(len(listed) - len(delivered), 0)

    def _record(
        self,
        study: SourceStudy,
        counts: dict[str, int],
        present: int,
        missing: int,
        patient_id: str | None,
    ) -> Callable[[Any], object] | None:
        """The index write job of one DICOM Instances Transferred record for the study moved
        (PS3.15 A.5.3.4)."""
        failed = counts["refused"] + missing
        return self.migrator.guard.record_job(
            audit_events.instances_transferred(
                self.who,
                patient_id=patient_id,
                study_uids=[study.study_uid],
                outcome=EventOutcome.SUCCESS if not failed else EventOutcome.MINOR_FAILURE,
                stored=True,
                description=(
                    f"migration {self.request.name} from {self.source.description}: "
                    f"{counts['stored']} stored, {present} already present, "
                    f"{counts['refused']} refused, {missing} not delivered"
                ),
            )
        )
