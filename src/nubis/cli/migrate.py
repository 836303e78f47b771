"""``nubis migrate``: move a legacy archive in (run), and reconcile it (report).

``run`` is a ``migrate`` job run in this process, so ``nubis jobs`` lists it with its progress
from anywhere; run the same command again after an interruption (even a SIGKILL) and it
resumes the unfinished job of that name, without moving again what is stored and verified.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nubis.cli.common import Config, DataDir, Set, configure_logs, load, open_archive
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.jobs.store import Job, JobStore

app = typer.Typer(
    help="Migrate from a legacy archive (DIMSE, DICOMweb, folders, zip/tar, DICOMDIR media).",
    no_args_is_help=True,
)

Name = Annotated[
    str | None,
    typer.Option(
        "--name", help="The migration's name (its ledger and report); default: the source."
    ),
]
Tenant = Annotated[str, typer.Option("--tenant", help="The tenant the objects go to.")]

# Each resume after an interruption is an attempt; a migration is resumed, not given up.
_MAX_ATTEMPTS = 1000


@app.command()
def run(
    source: Annotated[
        str,
        typer.Argument(
            help="dicom://AE@HOST:PORT (a DIMSE PACS), http(s)://.../dicom-web (DICOMweb), "
            "or a folder, zip or tar file (with or without a DICOMDIR)."
        ),
    ],
    name: Name = None,
    tenant: Tenant = "default",
    since_last_run: Annotated[
        bool,
        typer.Option(
            "--since-last-run",
            help="Delta: of the studies an earlier run finished, skip those whose SOP Instance "
            "UIDs at the source are unchanged (one instance query each) and move only what "
            "nubis lacks of the others; --from limits it to recent studies.",
        ),
    ] = False,
    max_mb_per_s: Annotated[
        float | None, typer.Option("--max-mb-per-s", help="Most megabytes per second moved.")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="Studies moved at once.")] = 1,
    window: Annotated[
        str | None,
        typer.Option(
            "--window",
            help="Local times a study may start, e.g. 20:00-06:00 (comma-separated windows).",
        ),
    ] = None,
    date_from: Annotated[
        str | None, typer.Option("--from", help="Only studies from this date (YYYYMMDD).")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Only studies up to this date (YYYYMMDD).")
    ] = None,
    retrieve: Annotated[
        str, typer.Option(help="DIMSE: move (C-MOVE to --move-ae) or get (C-GET).")
    ] = "move",
    calling_ae: Annotated[
        str | None, typer.Option(help="DIMSE: our AE title (default: ae_title).")
    ] = None,
    move_ae: Annotated[
        str | None,
        typer.Option(help="DIMSE: the C-MOVE destination AE title (default: ae_title)."),
    ] = None,
    listen_port: Annotated[
        int,
        typer.Option(
            help="DIMSE: the port this process receives C-MOVE sub-operations on; the source "
            "must know --move-ae at this host and port."
        ),
    ] = 11113,
    find_limit: Annotated[
        int | None,
        typer.Option(help="DIMSE: the source's C-FIND result cap, when it is known."),
    ] = None,
    authorization: Annotated[
        str | None,
        typer.Option(
            envvar="NUBIS_MIGRATE_AUTHORIZATION",
            help="DICOMweb: Authorization header for the source (not kept in the job).",
        ),
    ] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Migrate (or resume migrating) everything the source holds into the archive."""
    from nubis.jobs.runner import JobRunner
    from nubis.jobs.store import JobState
    from nubis.migrate.job import Migrator
    from nubis.migrate.request import KIND, MigrationRequest, default_name
    from nubis.security.authn import os_account

    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)
    try:
        request = MigrationRequest(
            name=name or default_name(source),
            source=source,
            tenant=tenant,
            since_last_run=since_last_run,
            max_mb_per_s=max_mb_per_s,
            concurrency=concurrency,
            window=window,
            date_from=date_from,
            date_to=date_to,
            retrieve=retrieve,
            calling_ae=calling_ae or settings.ae_title,
            move_ae=move_ae or settings.ae_title,
            listen_port=listen_port,
            find_limit=find_limit,
        )
    except ValueError as exc:
        console.print(str(exc), style="red")
        raise typer.Exit(2) from None
    with open_archive(settings=settings) as archive:
        store = archive.jobs
        job_id = _unfinished(store, request.name)
        if job_id is None:
            job_id = store.enqueue(
                KIND,
                request.params(),
                max_attempts=_MAX_ATTEMPTS,
                created_by=f"cli:{os_account()}",
            )
            assert job_id is not None
            console.print(f"migration {request.name}: job {job_id}")
        else:
            console.print(f"migration {request.name}: resuming job {job_id}")
        with _ProgressDisplay() as show:
            migrator = Migrator(
                store=archive.store,
                guard=archive.guard,
                spool=archive.spool,
                on_progress=show,
            )

            def handler(ctx: Any) -> dict[str, Any]:
                return migrator.run(ctx, authorization=authorization)

            runner = JobRunner(store, {KIND: handler}, lease_seconds=settings.jobs_lease_seconds)
            # Ctrl-C or SIGTERM: the job goes back to the queue with its progress.
            previous = {
                sig: signal.signal(sig, lambda *_: runner.stop(timeout=0))
                for sig in (signal.SIGINT, signal.SIGTERM)
            }
            try:
                _claim_and_run(runner, store, job_id, handler)
            finally:
                for sig, handler_before in previous.items():
                    signal.signal(sig, handler_before)
        job = store.get(job_id)
    assert job is not None
    if job.state is not JobState.DONE:
        console.print(
            f"job {job_id} {job.state.value}: {job.last_error or 'interrupted'}; "
            "run the same command again to resume",
            style="red",
        )
        raise typer.Exit(1)
    out.print_json(json.dumps(job.result))


def _unfinished(store: JobStore, name: str) -> int | None:
    """The job of migration ``name`` that has not finished, if any."""
    from nubis.jobs.store import JobState
    from nubis.migrate.request import KIND

    for job in store.list(limit=1000, states=[JobState.QUEUED, JobState.RUNNING], kind=KIND):
        if job.params.get("name") == name:
            return job.id
    return None


def _claim_and_run(runner: Any, store: JobStore, job_id: int, handler: Any) -> None:
    """Run the job here once it is claimable: a job whose process was killed keeps its lease
    until it expires (jobs_lease_seconds), and a failed attempt waits out its backoff. A lease
    that is renewed meanwhile belongs to a live process: exit 1 naming it."""
    from nubis.jobs.store import JobState

    told = False
    first_expiry: int | None = None
    while not runner.run_job(job_id, handler):
        job: Job | None = store.get(job_id)
        if job is None or job.state.finished:
            return
        if job.state is JobState.RUNNING:
            first_expiry = first_expiry or job.lease_expires_at
            if job.lease_expires_at != first_expiry:
                console.print(
                    f"job {job_id} is running in {job.lease_owner}; stop it there first "
                    f"(or nubis jobs cancel {job_id})",
                    style="red",
                )
                raise typer.Exit(1)
        if not told:
            console.print(
                f"job {job_id} is held by {job.lease_owner or 'a retry delay'}; waiting for "
                "its lease or delay to end",
                style="yellow",
            )
            told = True
        time.sleep(1.0)


class _ProgressDisplay:
    """A progress bar with the rate and the time remaining, fed by the migrator."""

    def __enter__(self) -> Any:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not sys.stderr.isatty(),
        )
        self.progress.__enter__()
        self.task = self.progress.add_task("listing", total=None, rate="")
        self.started = time.monotonic()
        return self.show

    def show(self, view: Any) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        self.progress.update(
            self.task,
            description=f"{view.phase} {view.studies_done}/{view.studies_total} studies",
            completed=view.done,
            total=view.total or None,
            rate=f"{view.moved_bytes / elapsed / 1e6:.1f} MB/s",
        )

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)


@app.command()
def report(
    name: Annotated[str, typer.Argument(help="The migration's name (or its source).")],
    output_format: Annotated[
        str, typer.Option("--format", help="text (a readable summary), json or csv.")
    ] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", help="Write the report to this file.")
    ] = None,
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Reconcile the source and the archive, study by study; exit 1 while any source instance
    is missing, refused or held with another SHA-256, or part of the source was not listed.
    Studies held in quarantine are in the archive (exit 0 for them) and listed, with why."""
    from nubis.jobs.store import JobState
    from nubis.migrate.ledger import Ledger
    from nubis.migrate.report import reconcile
    from nubis.migrate.request import KIND, default_name
    from nubis.security.authn import cli_principal

    if output_format not in ("text", "json", "csv"):
        console.print("--format: text, json or csv", style="red")
        raise typer.Exit(2)
    with open_archive(data_dir, config, set_) as archive:
        name = name if len(name) <= 64 else default_name(name)
        gaps: list[dict[str, str]] = []
        for job in archive.jobs.list(limit=1000, kind=KIND):
            if job.params.get("name") == name and job.state is JobState.DONE and job.result:
                gaps = job.result.get("listing_gaps") or []
                break
        ledger = Ledger(archive.index, name, tenant)
        result = reconcile(
            ledger, archive.retrieve, archive.quarantine, cli_principal(tenant), listing_gaps=gaps
        )
    if not result.studies:
        console.print(f"no migration named {name!r}", style="red")
        raise typer.Exit(1)
    text = (
        json.dumps(result.as_json(), indent=2) + "\n"
        if output_format == "json"
        else result.as_csv()
        if output_format == "csv"
        else result.as_text()
    )
    if output is not None:
        output.write_text(text)
    else:
        sys.stdout.write(text)
    totals = result.totals
    if any(totals[k] for k in ("missing", "refused", "sha256_differs", "listing_gaps")):
        raise typer.Exit(1)
