"""The ``nubis`` command: serve, import, settings, reap.

Options that set a setting take their help text from nubis.config, where each setting is
declared once; ``--set NAME=VALUE`` reaches every other setting.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nubis import __version__
from nubis.cli.common import Config, DataDir, Set, configure_logs, load, open_archive
from nubis.cli.output import console, out
from nubis.cli.transport import TransportError, check_transport, print_first_login
from nubis.config import SETTINGS, SETTINGS_BY_NAME, displayed_value, settings_environment


def _settings_epilog() -> str:
    lines = ["Settings (TOML file keys; environment NUBIS_<NAME>; --set NAME=VALUE):\n\n"]
    for s in SETTINGS:
        lines.append(f"{s.name} [{s.env_var}, default {s.default!s}]: {s.help}\n\n")
    return "".join(lines)


app = typer.Typer(
    name="nubis",
    help=f"nubis {__version__}: a cloud-native archive for medical images (DICOMweb).",
    epilog=_settings_epilog(),
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


def _help(name: str) -> str:
    return SETTINGS_BY_NAME[name].help


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help=_help("host"))] = None,
    http_port: Annotated[int | None, typer.Option(help=_help("http_port"))] = None,
    index: Annotated[str | None, typer.Option(help=_help("index"))] = None,
    blobs: Annotated[str | None, typer.Option(help=_help("blobs"))] = None,
    workers: Annotated[int | None, typer.Option(help=_help("workers"))] = None,
    dimse_port: Annotated[int | None, typer.Option(help=_help("dimse_port"))] = None,
    ae_title: Annotated[str | None, typer.Option(help=_help("ae_title"))] = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Start the archive: DICOMweb at http://HOST:PORT/dicom-web, WADO-URI at /wado, DIMSE
    (C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, storage commitment) on the DICOM port."""
    import uvicorn

    from nubis.archive import Archive
    from nubis.errors import NubisError
    from nubis.metrics import MULTIPROCESS_ENV
    from nubis.web.slow_clients import PROTOCOL as SLOW_CLIENT_PROTOCOL

    settings = load(
        config,
        {
            "data_dir": data_dir,
            "host": host,
            "http_port": http_port,
            "index": index,
            "blobs": blobs,
            "workers": workers,
            "dimse_port": dimse_port,
            "ae_title": ae_title,
        },
        set_,
    )
    configure_logs(settings)
    try:
        transport = check_transport(settings)
    except TransportError as exc:
        console.print(f"refusing to start: {exc}", style="red")
        raise typer.Exit(2) from None
    # Workers re-read their settings from the environment: hand them what was resolved here.
    os.environ.update(settings_environment(settings))
    os.environ.pop("NUBIS_CONFIG", None)
    archive = Archive(settings)
    archive.prepare()
    try:
        archive.record_application(started=True)
    except NubisError as exc:
        console.print(f"refusing to start: {exc.reason}", style="red")
        raise typer.Exit(2) from None
    url = f"{transport.scheme}://{settings.host}:{settings.http_port}"
    console.print(
        f"nubis {__version__}: DICOMweb at {url}/dicom-web "
        f"({settings.worker_count} worker(s), data in {settings.data_dir.resolve()})"
    )
    for warning in transport.warnings:
        console.print(warning, style="yellow")
    if archive.first_login_key:
        print_first_login(console, url, archive.first_login_key)
    if archive.dimse_enabled:
        # Each worker serves the DICOM port(s) too (SO_REUSEPORT), before it reports ready.
        dimse_host = settings.dimse_host or settings.host
        if settings.dimse_port:
            console.print(
                f"DIMSE at dicom://{settings.ae_title}@{dimse_host}:{settings.dimse_port}"
            )
        if settings.dimse_tls_cert:
            console.print(
                f"DIMSE TLS at dicom+tls://{settings.ae_title}@{dimse_host}:{settings.dimse_tls_port}"
            )
    # Workers count into files of one folder, added up at each scrape (nubis.metrics).
    shared_metrics = settings.worker_count > 1 and not os.environ.get(MULTIPROCESS_ENV)
    if shared_metrics:
        os.environ[MULTIPROCESS_ENV] = tempfile.mkdtemp(prefix="nubis-metrics-")
    uvicorn.run(
        "nubis.web.app:app_from_environment",
        factory=True,
        host=settings.host,
        port=settings.http_port,
        workers=settings.worker_count,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=10,
        # Forwarding headers are read by nubis.web.proxies from trusted_proxies only; uvicorn's
        # own reading trusts 127.0.0.1 (and FORWARDED_ALLOW_IPS) by default.
        proxy_headers=False,
        forwarded_allow_ips="",
        # httptools with header and body timeouts (http_header/body_timeout_seconds).
        http=SLOW_CLIENT_PROTOCOL,
        # JSON lines: uvicorn's own loggers then propagate to nubis's handler (nubis.logs)
        # rather than get handlers and formats of uvicorn's.
        log_config=None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
        **transport.uvicorn_options,
    )
    if shared_metrics:
        shutil.rmtree(os.environ.pop(MULTIPROCESS_ENV), ignore_errors=True)
    try:
        archive.record_application(started=False)
    except NubisError as exc:
        console.print(f"the stop could not be recorded: {exc.reason}", style="red")


@app.command("import")
def import_files(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (recursive).")],
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Store local DICOM files into the archive (the server may be stopped or running)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from nubis.archive import Archive
    from nubis.errors import InsufficientStorage
    from nubis.security.authn import cli_principal

    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)
    files = [p for path in paths for p in ([path] if path.is_file() else sorted(path.rglob("*")))]
    files = [f for f in files if f.is_file()]
    stored = failed = warned = 0
    operator = cli_principal()
    with (
        Archive(settings) as archive,
        Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("importing", total=len(files))
        for path in files:
            try:
                spooled = archive.spool.from_file(path)
            except InsufficientStorage as exc:  # below min_free_disk: the rest would be too
                progress.console.print(f"[red]stopped: {exc.reason}")
                failed += len(files) - stored - failed
                break
            outcome = archive.store.store(spooled, principal=operator)
            if outcome.error is None:
                stored += 1
                warned += bool(outcome.warnings)
            else:
                failed += 1
                progress.console.print(f"{path}: {outcome.error.reason}")
            progress.advance(task)
    noted = f" ({warned} with warnings: nubis storage warnings)" if warned else ""
    console.print(f"{stored} stored{noted}, {failed} refused")
    if failed:
        raise typer.Exit(1)


@app.command()
def reap(
    data_dir: DataDir = None,
    config: Config = None,
    grace_seconds: Annotated[
        int | None, typer.Option(help="Override orphan_grace_seconds for this run.")
    ] = None,
    set_: Set = None,
) -> None:
    """Delete blobs of deleted instances and orphan blobs (no index row)."""
    settings = load(config, {"data_dir": data_dir}, set_)
    configure_logs(settings)
    with open_archive(settings=settings) as archive:
        report = archive.maintenance.reap(grace_seconds)
    console.print(
        f"{report.doomed_deleted} deleted and {report.orphans_deleted} orphan blob(s) removed"
    )


@app.command("settings")
def show_settings(config: Config = None, set_: Set = None) -> None:
    """Show every setting, its value, where the value came from, and its help."""
    settings = load(config, {}, set_)
    table = Table("setting", "value", "from", "environment", "help")
    for s in SETTINGS:
        table.add_row(
            s.name,
            displayed_value(s.name, getattr(settings, s.name)),
            settings.sources[s.name],
            s.env_var,
            s.help,
        )
    out.print(table)


def _add_subcommands() -> None:
    from nubis.cli.audit import app as audit_app
    from nubis.cli.backup import app as backup_app
    from nubis.cli.backup import restore
    from nubis.cli.corrections import app as corrections_app
    from nubis.cli.dimse import app as dimse_app
    from nubis.cli.export import app as export_app
    from nubis.cli.jobs import app as jobs_app
    from nubis.cli.keys import app as keys_app
    from nubis.cli.migrate import app as migrate_app
    from nubis.cli.ohif import app as ohif_app
    from nubis.cli.replication import app as replication_app
    from nubis.cli.research import app as research_app
    from nubis.cli.retention import app as retention_app
    from nubis.cli.shares import app as shares_app
    from nubis.cli.storage import app as storage_app
    from nubis.cli.users import apikeys_app, users_app
    from nubis.cli.webhooks import app as webhooks_app

    app.add_typer(dimse_app, name="dimse")
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(storage_app, name="storage")
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
    app.add_typer(users_app, name="users")
    app.add_typer(apikeys_app, name="apikeys")
    app.add_typer(shares_app, name="shares")
    app.add_typer(ohif_app, name="ohif")
    app.add_typer(migrate_app, name="migrate")
    app.add_typer(corrections_app, name="studies")
    app.add_typer(backup_app, name="backup")
    app.add_typer(replication_app, name="replication")
    app.add_typer(retention_app, name="retention")
    app.add_typer(export_app, name="export")
    app.add_typer(research_app, name="research")
    app.add_typer(webhooks_app, name="webhooks")
    app.command("restore")(restore)


_add_subcommands()


def main() -> None:
    app()
