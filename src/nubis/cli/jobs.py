"""``nubis jobs``: background jobs (list with progress, run, show, cancel, work).

Jobs live in the index, so these commands work the same whether the servers are running or
not, from any machine that reaches the index: ``run`` only queues a job, and whichever
``nubis serve`` worker (or ``nubis jobs work`` process) is free takes it.
"""

from __future__ import annotations

import json
import signal
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from nubis.cli.common import (
    AsJson,
    Config,
    DataDir,
    Set,
    configure_logs,
    follow_job,
    load,
    open_archive,
    open_index,
)
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.jobs.store import Job


app = typer.Typer(
    help="Background jobs: list (with progress), run, show, cancel, work.", no_args_is_help=True
)


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    moment = datetime.fromtimestamp(ms / 1000)
    # Today's times alone keep the table within a terminal's width.
    return moment.strftime(
        "%H:%M:%S" if moment.date() == datetime.now().date() else "%Y-%m-%d %H:%M"
    )


def _progress_cell(job: Job) -> Any:
    fraction = job.fraction
    if fraction is None:
        return f"{job.progress_done:,}" if job.progress_done else ""
    bar = ProgressBar(total=100, completed=fraction * 100, width=10)
    table = Table.grid(padding=(0, 1))
    table.add_row(bar, f"{fraction:6.1%}")
    return table


def _eta_seconds(job: Job) -> float | None:
    """Time left of a running job at the rate it has gone since it started; None unknown."""
    from nubis.jobs.store import JobState, now_ms

    fraction = job.fraction
    if job.state is not JobState.RUNNING or not fraction or job.started_at is None:
        return None
    elapsed = (now_ms() - job.started_at) / 1000
    return max(0.0, elapsed * (1 - fraction) / fraction)


def _job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state.value,
        "params": job.params,
        "progress": {"done": job.progress_done, "total": job.progress_total,
                     "fraction": job.fraction, "eta_seconds": _eta_seconds(job)},
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "node": job.lease_owner,
        "lease_expires_at": job.lease_expires_at,
        "cancel_requested": job.cancel_requested,
        "created_at": job.created_at,
        "created_by": job.created_by,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "last_error": job.last_error,
        "result": job.result,
    }  # fmt: skip


def _verify_note(result: dict[str, Any]) -> str:
    """A finished verify job's damage and what self-healing made of it."""
    damaged = sum(int(result.get(p, 0)) for p in ("missing", "mismatch", "unreadable"))
    if not damaged:
        return f"{int(result.get('checked', 0)):,} intact"
    healed = ""
    if "repaired" in result or "not_repairable" in result:
        healed = (
            f": {int(result.get('repaired', 0))} repaired, "
            f"{int(result.get('not_repairable', 0))} not repairable"
        )
    return f"{damaged} damaged{healed}"


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    from nubis.jobs.kinds import parse_params

    try:
        return parse_params(items or [])
    except ValueError as exc:
        console.print(f"--param: {exc}", style="red")
        raise typer.Exit(2) from None


@app.command("list")
def list_jobs(
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
    state: Annotated[
        list[str] | None, typer.Option("--state", help="Only jobs in this state (repeatable).")
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only jobs of this kind.")] = None,
    limit: Annotated[int, typer.Option(help="Newest jobs shown.")] = 30,
    as_json: AsJson = False,
) -> None:
    """Jobs, newest first, with their progress."""
    from nubis.jobs.store import JobState, JobStore

    try:
        states = [JobState(s) for s in state or []]
    except ValueError:
        console.print(f"--state: one of {', '.join(s.value for s in JobState)}", style="red")
        raise typer.Exit(2) from None
    with open_index(data_dir, config, set_) as (_, index):
        found = JobStore(index).list(limit=limit, states=states, kind=kind)
    if as_json:
        out.print_json(json.dumps([_job_json(j) for j in found]))
        return
    table = Table("id", "kind", "state", "progress", "tries", "node", "started", "finished", "note")
    colours = {"done": "green", "failed": "red", "running": "cyan", "cancelled": "yellow"}
    for job in found:
        note = job.last_error or ""
        if job.cancel_requested and not job.state.finished:
            note = "cancel requested"
        elif (eta := _eta_seconds(job)) is not None:
            note = f"ETA {int(eta // 60)}m {int(eta % 60):02d}s"
        elif job.kind == "verify" and job.result:
            note = _verify_note(job.result)
        table.add_row(
            str(job.id),
            job.kind,
            Text(job.state.value, style=colours.get(job.state.value, "white")),
            _progress_cell(job),
            f"{job.attempts}/{job.max_attempts}",
            job.lease_owner or "",
            _when(job.started_at),
            _when(job.finished_at),
            note[:60],
        )
    out.print(table)


@app.command()
def run(
    kind: Annotated[
        str,
        typer.Argument(
            help="reap, verify, tier, rewrap, rekey, storage-snapshot, audit-verify, "
            "analyze-scan or analyze (analyzer=NAME study=UID), or retention (a deleting "
            "run needs approve=true: nubis retention run)."
        ),
    ],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            help="Job parameter NAME=VALUE (repeatable), e.g. study=1.2.3, max_mb_per_s=50, "
            "grace_seconds=0, kek_id=k1 (rewrap).",
        ),
    ] = None,
    wait: Annotated[bool, typer.Option(help="Follow the job's progress until it ends.")] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Queue a job; a running server (or nubis jobs work) takes it."""
    from nubis.jobs.kinds import KINDS
    from nubis.jobs.store import JobState, JobStore

    if kind not in KINDS:
        console.print(f"unknown job kind {kind!r} (kinds: {', '.join(KINDS)})", style="red")
        raise typer.Exit(2)
    params = _parse_params(param)
    from nubis.security.authn import os_account

    with open_index(data_dir, config, set_) as (_, index):
        store = JobStore(index)
        job_id = store.enqueue(kind, params, created_by=f"cli:{os_account()}")
        assert job_id is not None
        out.print(f"job {job_id} ({kind}) queued")
        if not wait:
            return
        job = follow_job(store, job_id)
    if job.state is not JobState.DONE:
        console.print(f"job {job_id} {job.state.value}: {job.last_error or ''}", style="red")
        raise typer.Exit(1)
    out.print_json(json.dumps(job.result))


@app.command()
def show(
    job_id: Annotated[int, typer.Argument(help="The job's id (nubis jobs list).")],
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Everything about one job, its result included (JSON)."""
    from nubis.jobs.store import JobStore

    with open_index(data_dir, config, set_) as (_, index):
        job = JobStore(index).get(job_id)
    if job is None:
        console.print(f"no job {job_id}", style="red")
        raise typer.Exit(1)
    out.print_json(json.dumps(_job_json(job)))


@app.command()
def cancel(
    job_id: Annotated[int, typer.Argument(help="The job's id (nubis jobs list).")],
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Cancel a job: a queued one at once, a running one at its next progress report."""
    from nubis.jobs.store import JobState, JobStore

    with open_index(data_dir, config, set_) as (_, index):
        state = JobStore(index).cancel(job_id)
    if state is None:
        console.print(f"no job {job_id}", style="red")
        raise typer.Exit(1)
    if state is JobState.QUEUED:
        out.print(f"job {job_id} cancelled")
    elif state is JobState.RUNNING:
        out.print(f"job {job_id} is running: asked to stop")
    else:
        out.print(f"job {job_id} had already ended ({state.value})")


@app.command()
def work(
    once: Annotated[
        bool, typer.Option(help="Run the queued jobs that are due, then exit.")
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Run jobs in the foreground, as a serve worker does (a node that only runs jobs)."""
    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)
    with open_archive(settings=settings) as archive:
        runner = archive.new_job_runner(scheduled=not once)
        if once:
            ran = 0
            while runner.run_once():
                ran += 1
            out.print(f"{ran} job(s) run")
            return
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        runner.start()
        console.print(f"running jobs as {runner.owner}; Ctrl-C stops (a running job is put back)")
        stop.wait()
        runner.stop()
