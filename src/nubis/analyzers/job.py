"""The analyzer job kinds: ``analyze-scan`` finds studies to analyze, ``analyze`` analyzes one.

``analyze-scan`` (queued every ``analyzer_scan_seconds`` while the ``analyzers`` setting names
any) looks, for each rule, for studies no instance reached for ``analyzer_stable_seconds``,
changed within ``analyzer_lookback_hours``, not held in quarantine, whose modalities may hold
a series the analyzer wants, and never queued for that analyzer version; for each it writes
the ``analyzer_runs`` row and its ``analyze`` job in one commit (so a study is queued once,
whichever node scans). It keeps at most ``_OUTSTANDING`` runs of an analyzer queued at once:
a backlog (an analyzer enabled on a full archive) is worked through newest first.

``analyze`` (parameters ``analyzer``, ``study``, ``partition``; ``nubis jobs run analyze``
queues one by hand) takes one of its analyzer's concurrency slots or waits its turn without
spending an attempt (JobDeferred), reads the study as the principal ``analyzer:<name>``
through the retrieve service (nubis.analyzers.view: authorized by the Guard, recorded), calls
the analyzer, and stores each object it returns in the study through the store service as
the same principal (authorized, checked and recorded as any store). An analyzer's exception
is retried (``max_attempts`` 3, ``retry_seconds`` apart); an AnalyzerError, a result the
store refuses (another study's, an invalid object) or a study out of sight fails the run at
once. The results' UIDs are the analyzer's to keep stable across attempts: an object an
earlier attempt stored (409, the same UID) counts as stored.

A UPS workitem can ask for an analysis (nubis.analyzers.workitems, docs/analyzers.md): the
scan also finds the SCHEDULED ones and queues an ``analyze`` job with the parameters
``workitem`` and ``partition`` (once per workitem). That job claims the workitem as the
analyzer through the worklist service, runs the analysis above, and completes the workitem
with its results in the Output Information Sequence, or cancels it with the reason when the
analysis fails for good.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydicom import Dataset, dcmwrite

from nubis.analyzers import workitems
from nubis.analyzers.contract import Analyzer, AnalyzerError, Findings
from nubis.analyzers.rules import Rule
from nubis.analyzers.view import read_study
from nubis.errors import DuplicateInstance, NotFound
from nubis.index import analyzer_runs_sql as runs
from nubis.index import workitems_sql
from nubis.index.database import Index
from nubis.jobs.context import JobCancelled, JobContext, JobDeferred, JobFailed, JobStopped
from nubis.jobs.schedule import ANALYZE_SCAN
from nubis.jobs.store import JobStore, LeaseLost, now_ms
from nubis.security.policy import DEFAULT_TENANT, Principal
from nubis.services.retrieve import RetrieveService
from nubis.services.spool import Spool
from nubis.services.store import StoreService
from nubis.services.worklist import WorklistService

__all__ = ["ANALYZE", "SCAN", "AnalyzerJobs", "analyzer_principal"]

log = logging.getLogger(__name__)

SCAN = ANALYZE_SCAN
ANALYZE = "analyze"
MAX_ATTEMPTS = 3
# Studies of one analyzer queued at once by the scans (a backlog waits in the index).
_OUTSTANDING = 100
# A slot held by a runner that died is free again after this long.
_SLOT_SECONDS = 3600
# How soon a job that found every slot taken looks again.
_SLOT_WAIT_SECONDS = 10.0


def analyzer_principal(name: str, tenant: str) -> Principal:
    """The service account an analyzer reads and stores as: the internal role ``analyzer``
    (read, download and store in its tenant; studies in quarantine are absent to it)."""
    return Principal(
        f"analyzer:{name}", tenant, frozenset({"analyzer"}), via="system", auth_method="system"
    )


class AnalyzerJobs:
    def __init__(
        self,
        index: Index,
        retrieve: RetrieveService,
        store: StoreService,
        spool: Spool,
        *,
        rules: Sequence[Rule],
        analyzers: Callable[[], Mapping[str, Analyzer]],
        stable_seconds: int,
        lookback_hours: int,
        retry_seconds: float = 60.0,
        wake: Callable[[], None] | None = None,
        worklist: WorklistService | None = None,
    ) -> None:
        self.index = index
        self.retrieve = retrieve
        self.store = store
        self.spool = spool
        self.rules = {rule.analyzer: rule for rule in rules}
        self._analyzers = analyzers
        self._loaded: Mapping[str, Analyzer] | None = None
        self.stable_seconds = stable_seconds
        self.lookback_hours = lookback_hours
        self.retry_seconds = retry_seconds
        self.wake = wake
        self.worklist = worklist

    @property
    def analyzers(self) -> Mapping[str, Analyzer]:
        """Loaded at the first job, not when the archive starts: a node that never runs one
        never imports a plug-in."""
        if self._loaded is None:
            self._loaded = self._analyzers()
        return self._loaded

    # ------------------------------------------------------------------ analyze-scan
    def scan(self, ctx: JobContext) -> dict[str, Any]:
        now = now_ms()
        stable_before = now - self.stable_seconds * 1000
        since = now - self.lookback_hours * 3600_000 if self.lookback_hours else 0
        queued: dict[str, int] = {}
        for name, rule in self.rules.items():
            analyzer = self.analyzers.get(name)
            if analyzer is None:
                log.error("analyzers: %r is not installed (no built-in, no entry point)", name)
                continue
            wants = analyzer.wants.narrowed(rule.wants)
            with self.index.reading() as conn:
                room = _OUTSTANDING - runs.outstanding(conn, name, analyzer.version)
                found = runs.candidates(
                    conn,
                    name,
                    analyzer.version,
                    stable_before=stable_before,
                    since=since,
                    limit=max(room, 0),
                )
            count = 0
            for study in found:
                ctx.check()
                if not wants.takes_modalities(study.modalities):
                    continue
                params = {"analyzer": name, "partition": study.partition, "study": study.study_uid}
                self._queue(study.study_pk, name, analyzer.version, params)
                count += 1
            queued[name] = count
        workitems_queued = self._queue_workitems(ctx)
        if (any(queued.values()) or workitems_queued) and self.wake is not None:
            self.wake()
        return {"queued": queued, "workitems": workitems_queued}

    def _queue_workitems(self, ctx: JobContext) -> int:
        """Queue an ``analyze`` job for each SCHEDULED workitem asking for an analysis, once
        per workitem (its unique key): a job whose claim fails leaves it to its performer."""
        if self.worklist is None:
            return 0
        jobs = JobStore(self.index)
        count = 0
        with self.index.reading() as conn:
            tenants = workitems_sql.partitions_scheduling(
                conn, workitems.ANALYZE_CODE, workitems.SCHEME
            )
        for tenant in tenants:
            who = analyzer_principal("worklist", tenant)
            for uid in workitems.scheduled(self.worklist, who):
                ctx.check()
                params = {"workitem": uid, "partition": tenant}
                key = f"analyze-workitem:{tenant}:{uid}"
                if jobs.enqueue(
                    ANALYZE, params, unique_key=key, max_attempts=MAX_ATTEMPTS,
                    created_by="worklist",
                ) is not None:  # fmt: skip
                    count += 1
        return count

    def _queue(self, study_pk: int, name: str, version: str, params: dict[str, Any]) -> None:
        self.index.write(
            lambda conn: runs.queue(
                conn, study_pk, name, version, params, now=now_ms(), max_attempts=MAX_ATTEMPTS
            )
        )

    # ------------------------------------------------------------------ analyze
    def analyze(self, ctx: JobContext) -> dict[str, Any]:
        partition = str(ctx.params.get("partition") or DEFAULT_TENANT)
        if ctx.params.get("workitem"):
            return self._analyze_workitem(ctx, str(ctx.params["workitem"]), partition)
        name = str(ctx.params.get("analyzer", ""))
        study_uid = str(ctx.params.get("study", ""))
        return self._analyze_study(ctx, name, study_uid, partition)

    def _analyze_workitem(self, ctx: JobContext, uid: str, partition: str) -> dict[str, Any]:
        """Claim the workitem (or resume the claim an earlier attempt saved in the cursor),
        analyze, complete it; cancel it with the reason when the analysis fails for good."""
        if self.worklist is None:
            raise JobFailed("this node has no worklist service", retry_in=None)
        reader = analyzer_principal("worklist", partition)
        problem = ""
        try:
            asked = workitems.requested(self.worklist.retrieve(reader, uid))
        except NotFound as exc:
            raise JobFailed(f"workitem {uid}: {exc.reason}", retry_in=None) from exc
        except AnalyzerError as exc:
            asked, problem = None, exc.reason
        who = analyzer_principal(asked.analyzer if asked else "worklist", partition)
        claimed = ctx.cursor if isinstance(ctx.cursor, dict) else None
        if claimed is None:
            transaction = workitems.claim(self.worklist, who, uid)
            if transaction is None:
                return {"workitem": uid, "claimed": False}
            claimed = {"transaction": transaction, "started": workitems.now_dt()}
            ctx.progress(0, cursor=claimed)
        transaction = str(claimed["transaction"])
        if asked is None or asked.analyzer not in self.analyzers:
            if asked is not None:
                problem = f"the analyzer {asked.analyzer!r} is not installed"
            workitems.cancel(self.worklist, who, uid, transaction, problem)
            raise JobFailed(f"workitem {uid}: {problem}", retry_in=None)
        try:
            outcome = self._analyze_study(ctx, asked.analyzer, asked.study_uid, partition)
        except JobFailed as failed:
            if failed.retry_in is None or ctx.job.attempts >= ctx.job.max_attempts:
                workitems.cancel(self.worklist, who, uid, transaction, failed.reason)
            raise
        workitems.complete(
            self.worklist,
            who,
            uid,
            transaction,
            started=str(claimed["started"]),
            study_uid=asked.study_uid,
            stored=outcome.get("stored", []),
        )
        return {**outcome, "workitem": uid}

    def _analyze_study(
        self, ctx: JobContext, name: str, study_uid: str, partition: str
    ) -> dict[str, Any]:
        analyzer = self.analyzers.get(name)
        if analyzer is None or not study_uid:
            raise JobFailed(
                f"analyze needs analyzer=NAME (installed: {', '.join(self.analyzers) or 'none'})"
                " and study=UID",
                retry_in=None,
            )
        run = self.index.write(
            lambda conn: runs.ensure_run(
                conn, partition, study_uid, name, analyzer.version, now=now_ms()
            )
        )
        if run is None:
            raise JobFailed(f"study {study_uid} is not in the index", retry_in=None)
        rule = self.rules.get(name, Rule(name))
        took = self.index.write(
            lambda conn: runs.take_slot(
                conn, run.id, name, limit=rule.concurrency, job_id=ctx.job.id,
                now=now_ms(), slot_ms=_SLOT_SECONDS * 1000,
            )
        )  # fmt: skip
        if not took:
            raise JobDeferred(
                f"{name}: all {rule.concurrency} concurrency slot(s) are taken",
                retry_in=_SLOT_WAIT_SECONDS,
            )
        try:
            outcome = self._analyze(ctx, analyzer, partition, study_uid, rule)
        except (AnalyzerError, NotFound) as exc:
            # Bad input, a refused result, or a study gone or out of the analyzer's sight:
            # another attempt would end the same way.
            self._finish(run.id, runs.FAILED, error=exc.reason)
            raise JobFailed(f"{name}: {exc.reason}", retry_in=None) from exc
        except JobCancelled:
            self._finish(run.id, runs.FAILED, error="cancelled")
            raise
        except JobStopped:
            # Back in the queue with its job (the runner is stopping): the slot is free.
            self.index.write(lambda conn: runs.put_back(conn, run.id, "interrupted"))
            raise
        except LeaseLost:
            raise  # another runner has the job, and the run, now
        except Exception as exc:
            reason = f"{name}: {type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"[:500]
            if ctx.job.attempts >= ctx.job.max_attempts:
                self._finish(run.id, runs.FAILED, error=reason)
            else:
                self.index.write(lambda conn: runs.put_back(conn, run.id, reason))
            raise JobFailed(reason, retry_in=self.retry_seconds) from exc
        state = runs.DONE if outcome.get("analyzed") else runs.SKIPPED
        self._finish(run.id, state, summary=outcome)
        return outcome

    def _analyze(
        self, ctx: JobContext, analyzer: Analyzer, partition: str, study_uid: str, rule: Rule
    ) -> dict[str, Any]:
        who = analyzer_principal(analyzer.name, partition)
        wants = analyzer.wants.narrowed(rule.wants)
        view = read_study(self.retrieve, who, study_uid, wants)
        if not view.series:
            return {"analyzed": False, "reason": "no series the analyzer wants"}
        ctx.progress(0, len(view.series) + 1)
        started = time.monotonic()
        findings: Findings = analyzer.analyze(view)
        seconds = round(time.monotonic() - started, 3)
        ctx.progress(len(view.series))
        stored = [self._store(who, study_uid, ds) for ds in findings.objects]
        ctx.progress(len(view.series) + 1)
        return {
            "analyzed": True,
            "analyzer": analyzer.name,
            "version": analyzer.version,
            "series": len(view.series),
            "seconds": seconds,
            "stored": stored,
            "findings": findings.summary,
        }

    def _store(self, who: Principal, study_uid: str, ds: Dataset) -> dict[str, str]:
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
        with self.spool.writer() as writer:
            writer.write(buffer.getbuffer())
            spooled = writer.finish()
        outcome = self.store.store(spooled, principal=who, expected_study_uid=study_uid)
        error = outcome.error
        if error is not None and not isinstance(error, DuplicateInstance):
            if error.http_status < 500:
                raise AnalyzerError(f"result {ds.SOPInstanceUID} refused: {error.reason}")
            raise error
        return {
            "sop_class_uid": str(ds.SOPClassUID),
            "series_uid": str(ds.SeriesInstanceUID),
            "sop_instance_uid": str(ds.SOPInstanceUID),
        }

    def _finish(
        self,
        run_id: int,
        state: str,
        *,
        summary: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        self.index.write(
            lambda conn: runs.finish(
                conn, run_id, state, now=now_ms(), summary=summary, error=error
            )
        )
