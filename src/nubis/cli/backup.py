"""``nubis backup`` (take one, or ``verify`` one) and ``nubis restore``.

``nubis backup --to DIR|s3://...`` runs a ``backup`` job in this process (nubis.backup.job), as
``nubis migrate run`` runs its job: ``nubis jobs`` lists it with its progress from anywhere, and the
same command after an interruption resumes it (what the folder holds is not copied again).
The server may keep running and taking stores throughout. Keys are never in a backup: back
them up apart (docs/backup.md).
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from nubis.cli.common import Config, DataDir, Set, configure_logs, follow_job, load, open_archive
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.jobs.store import JobStore

app = typer.Typer(
    help="Back the archive up into a folder or S3 prefix (--to DIR|s3://...), or check a "
    "backup (verify DIR|s3://...).",
    invoke_without_command=True,
)

# Each resume after an interruption is an attempt.
_MAX_ATTEMPTS = 100


@app.callback()
def backup(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="The backup folder (made if missing) or s3://BUCKET/PREFIX?endpoint=... (the "
            "blob store's URL form, credentials from the AWS chain); later backups into it copy "
            "only new blobs.",
        ),
    ] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Take a consistent online backup of the index and the blobs into a folder."""
    if ctx.invoked_subcommand is not None:
        return
    if to is None:
        console.print("--to DIR|s3://...: where to back up into", style="red")
        raise typer.Exit(2)
    from nubis.backup.job import KIND, Backup
    from nubis.jobs.runner import JobRunner
    from nubis.jobs.store import JobState
    from nubis.security.authn import cli_principal, os_account
    from nubis.security.policy import Action

    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)
    folder = to if to.startswith("s3://") else str(Path(to).resolve())
    with open_archive(settings=settings) as archive:
        operator = cli_principal()
        # Every tenant's objects leave the archive's control: the archive's operators only.
        archive.guard.authorize(operator, Action.OPERATE | Action.EXPORT, f"back up to {folder}")
        store = archive.jobs
        job_id = _unfinished(store, folder)
        if job_id is None:
            job_id = store.enqueue(
                KIND, {"to": folder}, max_attempts=_MAX_ATTEMPTS, created_by=f"cli:{os_account()}"
            )
            assert job_id is not None
            console.print(f"backup to {folder}: job {job_id}")
        else:
            console.print(f"backup to {folder}: resuming job {job_id}")
        keyring = "index" if settings.keyring_url.startswith("index+") else "file"
        runner_of = Backup(
            archive.index, archive.blobs, archive.keys, keyring, archive.guard, operator
        )
        runner = JobRunner(store, {KIND: runner_of.run}, lease_seconds=settings.jobs_lease_seconds)
        claimed: list[bool] = []
        work = threading.Thread(
            target=lambda: claimed.append(runner.run_job(job_id, runner_of.run)),
            name="nubis-backup-job",
        )
        # Ctrl-C or SIGTERM: the job goes back to the queue; the same command resumes it.
        previous = {
            sig: signal.signal(sig, lambda *_: runner.stop(timeout=0))
            for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            work.start()
            follow_job(store, job_id, running=work.is_alive)
            work.join()
        finally:
            for sig, before in previous.items():
                signal.signal(sig, before)
        job = store.get(job_id)
    assert job is not None
    if not claimed or not claimed[0]:
        console.print(
            f"job {job_id} is held by {job.lease_owner or 'a retry delay'}: wait for it, or "
            f"nubis jobs cancel {job_id}",
            style="red",
        )
        raise typer.Exit(1)
    if job.state is not JobState.DONE:
        console.print(
            f"job {job_id} {job.state.value}: {job.last_error or 'interrupted'}; run the same "
            "command again to resume",
            style="red",
        )
        raise typer.Exit(1)
    out.print_json(json.dumps(job.result))
    damaged = {k: v for k, v in (job.result or {}).get("absent", {}).items()
               if v != "deleted after the snapshot"}  # fmt: skip
    if damaged:
        console.print(
            f"{len(damaged)} object(s) missing or damaged in the archive are not in the backup",
            style="red",
        )
        raise typer.Exit(1)


def _unfinished(store: JobStore, folder: str) -> int | None:
    from nubis.backup.job import KIND
    from nubis.jobs.store import JobState

    for job in store.list(limit=1000, states=[JobState.QUEUED, JobState.RUNNING], kind=KIND):
        if job.params.get("to") == folder:
            return job.id
    return None


@app.command()
def verify(
    folder: Annotated[str, typer.Argument(help="The backup folder or s3:// URL.")],
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON.")] = False,
) -> None:
    """Check the newest backup in FOLDER (or s3://...) without restoring it: manifest, index
    snapshot (digest, integrity), every blob present with its size and SHA-256; exit 1 on a
    problem."""
    from nubis.backup.check import verify_backup

    report = verify_backup(folder)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "ok": report.ok,
                    "backup": report.manifest.created_at if report.manifest else None,
                    "blobs_checked": report.blobs_checked,
                    "bytes_checked": report.bytes_checked,
                    "problems": report.problems,
                    "problem_count": report.problem_count,
                }
            )
        )
    elif report.ok:
        assert report.manifest is not None
        out.print(
            f"backup of {report.manifest.created_at} intact: index snapshot and "
            f"{report.blobs_checked} blob(s) ({report.bytes_checked} bytes) match the manifest"
        )
    else:
        for problem in report.problems:
            out.print(problem, style="red")
        out.print(f"BACKUP DAMAGED: {report.problem_count} problem(s)", style="red")
    if not report.ok:
        raise typer.Exit(1)


def restore(
    source: Annotated[
        str,
        typer.Option(
            "--from", help="The backup folder or s3:// URL (its newest backup is restored)."
        ),
    ],
    keyring: Annotated[
        Path | None,
        typer.Option(
            "--keyring",
            help="The keyring backed up apart (needed when the objects are encrypted with a "
            "local keyring); copied into the new archive.",
        ),
    ] = None,
    audit_key: Annotated[
        Path | None,
        typer.Option(
            "--audit-key",
            help="The audit signing key backed up apart (needed when the trail has signed "
            "checkpoints); copied into the new archive.",
        ),
    ] = None,
    check_reads: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Read every restored object back through the archive (decrypted, its SHA-256 "
            "checked).",
        ),
    ] = True,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Rebuild a working archive from a backup on a fresh data folder (refused if not empty)."""
    from nubis.backup.restore import restore as run_restore
    from nubis.errors import NubisError
    from nubis.security.authn import cli_principal

    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)

    def show(phase: str, done: int, total: int) -> None:
        if done == total or done % 1000 == 0:
            console.print(f"{phase}: {done}/{total}")

    try:
        report = run_restore(
            source,
            settings,
            cli_principal(),
            keyring=keyring,
            audit_key=audit_key,
            check_reads=check_reads,
            progress=show,
        )
    except NubisError as exc:
        console.print(f"restore refused: {exc.reason}", style="red")
        raise typer.Exit(2) from None
    result: dict[str, Any] = report.as_json()
    out.print_json(json.dumps(result))
    if report.problems:
        raise typer.Exit(1)
