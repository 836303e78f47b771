"""``nubis shares``: the share links people made in the web face, for operators.

Works on the index directly (the server may be running: a revoked link's grants and sessions
are index rows, so every node stops serving it at the next request). The operator acts as an
admin of ``--tenant`` (``cli_principal``) through the same sharing service as the web face, so
a revocation is recorded like one made there.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.archive import Archive

app = typer.Typer(help="Share links: list, revoke.", no_args_is_help=True)

Config = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]
Set = Annotated[list[str] | None, typer.Option("--set", help="Any setting as NAME=VALUE.")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="The archive's data folder.")]
Tenant = Annotated[str, typer.Option(help="Tenant whose links these are.")]


@contextmanager
def _archive(
    data_dir: Path | None, config: Path | None, set_: list[str] | None
) -> Iterator[Archive]:
    from nubis.archive import Archive
    from nubis.cli.main import _load
    from nubis.errors import NubisError

    archive = Archive(_load(config, {"data_dir": data_dir}, set_))
    archive.index.migrate()
    archive.index.open()
    archive.audit.open()
    try:
        yield archive
    except NubisError as exc:
        console.print(exc.reason, style="red")
        raise typer.Exit(1) from None
    finally:
        archive.audit.close()
        archive.index.close()


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


@app.command("list")
def list_links(
    study: Annotated[str | None, typer.Option(help="Only links to this study.")] = None,
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Every link of the tenant, newest first (never the token: it is not kept)."""
    from nubis.security.authn import cli_principal

    with _archive(data_dir, config, set_) as archive:
        links = archive.sharing.list(cli_principal(tenant), study_uid=study)
    table = Table("id", "state", "study", "series", "made by", "expires", "access", "PIN", "opens")
    for link in links:
        table.add_row(
            link.id,
            link.state(),
            link.study_uid,
            str(len(link.series_uids)) if link.series_uids else "all",
            link.created_by,
            _when(link.expires_at),
            "download" if link.can_download else "view",
            "yes" if link.has_pin else "no",
            str(link.open_count),
        )
    out.print(table)


@app.command("revoke")
def revoke(
    link_id: Annotated[str, typer.Argument(help="The link's id (nubis shares list).")],
    tenant: Tenant = "default",
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Revoke a link at once: its grants go and its open sessions end."""
    from nubis.security.authn import cli_principal

    with _archive(data_dir, config, set_) as archive:
        link = archive.sharing.revoke(cli_principal(tenant), link_id)
    out.print(f"share link {link.id} to study {link.study_uid} revoked; its sessions ended")
