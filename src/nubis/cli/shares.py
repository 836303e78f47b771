"""``nubis shares``: the share links people made in the web face, for operators.

Works on the index directly (the server may be running: a revoked link's grants and sessions
are index rows, so every node stops serving it at the next request). The operator acts as an
admin of ``--tenant`` (``cli_principal``) through the same sharing service as the web face, so
a revocation is recorded like one made there.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nubis.cli.common import Config, DataDir, Set, open_archive
from nubis.cli.output import out

if TYPE_CHECKING:
    pass

app = typer.Typer(help="Share links: list, revoke.", no_args_is_help=True)

Tenant = Annotated[str, typer.Option(help="Tenant whose links these are.")]


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

    with open_archive(data_dir, config, set_) as archive:
        links = archive.sharing.list(cli_principal(tenant), study_uid=study)
        projects = {
            link.deid_project_id: archive.research.project_by_id(link.tenant, link.deid_project_id)
            for link in links
            if link.deid_project_id is not None
        }
    table = Table(
        "id",
        "state",
        "study",
        "series",
        "made by",
        "expires",
        "access",
        "PIN",
        "opens",
        "de-identified",
    )
    for link in links:
        if link.deid_project_id is not None:
            deidentified = f"as project {projects[link.deid_project_id].name}"
        else:
            deidentified = "own key" if link.deidentified else "no"
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
            deidentified,
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

    with open_archive(data_dir, config, set_) as archive:
        link = archive.sharing.revoke(cli_principal(tenant), link_id)
    out.print(f"share link {link.id} to study {link.study_uid} revoked; its sessions ended")
