"""What every ``nubis`` command shares: the settings options, and opening the archive.

Every command that works on an archive takes ``--data-dir``, ``--config`` and ``--set`` and
opens it here, one way: :func:`open_archive` (services, audited) or :func:`open_index` (the
index alone, for commands that only read or queue jobs). Command modules import from here and
never from one another, so none of them depends on ``nubis.cli.main``, which assembles them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nubis.cli.output import console
from nubis.config import SETTINGS_BY_NAME, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from nubis.archive import Archive
    from nubis.index.database import Index
    from nubis.jobs.store import Job, JobStore


Config = Annotated[
    Path | None, typer.Option("--config", help="TOML settings file (also NUBIS_CONFIG).")
]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help=SETTINGS_BY_NAME["data_dir"].help)]
Set = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any setting as NAME=VALUE (repeatable); see nubis settings."),
]
AsJson = Annotated[bool, typer.Option("--json", help="JSON instead of a table.")]


def load(config: Path | None, overrides: dict[str, object], extra: list[str] | None) -> Settings:
    """The settings from ``config``, the environment, the command's options (``overrides``,
    None for an option not given) and ``--set`` items (``extra``); exit 2 naming what is
    wrong."""
    for item in extra or []:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in SETTINGS_BY_NAME:
            console.print(
                f"--set {item!r}: expected NAME=VALUE with a known setting name", style="red"
            )
            raise typer.Exit(2)
        overrides.setdefault(name.strip(), value)
    try:
        return load_settings(config_file=config, overrides=overrides)
    except SettingsError as exc:
        console.print(f"configuration error: {exc}", style="red")
        raise typer.Exit(2) from None


def configure_logs(settings: Settings) -> None:
    """Logging as a server has it (for commands that run long work: serve, jobs work...)."""
    from nubis.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)


@contextmanager
def open_archive(
    data_dir: Path | None = None,
    config: Path | None = None,
    set_: list[str] | None = None,
    *,
    settings: Settings | None = None,
) -> Iterator[Archive]:
    """The archive of the options (or of ``settings``), for one command: its index migrated
    and open and its audit trail open, so what the command does through the services is
    authorized and recorded as a server's work is.

    A NubisError ends the command with its reason: exit 2 when the archive cannot be opened
    as configured (a keyring others may read...), 1 when raised by the command's work.
    """
    from nubis.archive import Archive
    from nubis.errors import NubisError

    if settings is None:
        settings = load(config, {"data_dir": data_dir}, set_)
    try:
        archive = Archive(settings)
    except NubisError as exc:
        console.print(f"{exc.reason}; nothing changed", style="red")
        raise typer.Exit(2) from None
    archive.index.migrate()
    archive.index.open()
    archive.audit.open()
    try:
        archive.forget_shredded_keys()
        yield archive
    except NubisError as exc:
        console.print(exc.reason, style="red")
        raise typer.Exit(1) from None
    finally:
        archive.audit.close()
        archive.index.close()


@contextmanager
def open_index(
    data_dir: Path | None, config: Path | None, set_: list[str] | None
) -> Iterator[tuple[Settings, Index]]:
    """The settings and the migrated, open index (no blob store, no services, no runner)."""
    from nubis.errors import NubisError
    from nubis.index.database import Index

    settings = load(config, {"data_dir": data_dir}, set_)
    index = Index(settings.index_url, durable=settings.durable)
    try:
        index.migrate()
        index.open()
        yield settings, index
    except NubisError as exc:
        console.print(exc.reason, style="red")
        raise typer.Exit(1) from None
    finally:
        index.close()


def follow_job(store: JobStore, job_id: int, running: Callable[[], bool] | None = None) -> Job:
    """Show a job's progress until it ends (whichever runner runs it), or until ``running``
    says the runner of this process let it go; the job as it was then."""
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.completed:,.0f}/{task.fields[total_text]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"job {job_id}", total=None, total_text="?")
        while True:
            job = store.get(job_id)
            assert job is not None  # jobs are removed only long after they end
            total = job.progress_total
            progress.update(
                task,
                description=f"job {job_id} {job.kind} {job.state.value}",
                completed=job.progress_done,
                total=total,
                total_text=f"{total:,}" if total else "?",
            )
            if job.state.finished or (running is not None and not running()):
                return job
            time.sleep(0.5)
