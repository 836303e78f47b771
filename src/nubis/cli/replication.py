"""``nubis replication``: how far behind the replica is (status), retrying what it refused,
promoting a read-only replica to a primary (failover: docs/replication.md) and demoting it
back (fail-back).

Both read and write the index through the operations service, so they work the same from any
machine that reaches the index, with the servers running or not (docs/replication.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from nubis.cli.common import AsJson, Config, DataDir, Set, open_archive
from nubis.cli.output import console, out
from nubis.errors import NubisError

app = typer.Typer(
    help="Replication to another nubis: status (lag, backlog, errors), retry, promote, demote.",
    no_args_is_help=True,
)


def _when(ms: int | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


@app.command()
def status(
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
    as_json: AsJson = False,
) -> None:
    """Lag (seconds since the oldest change the replica lacks, and changes behind), held-back
    deletes, parked entries, the last error and the last verified point; on an edge node
    (forward_to), the objects and bytes held here and those evicted."""
    from nubis.jobs.store import now_ms
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.operations.replication_status(cli_principal())
        replica = archive.settings.replicate_to
        primary = archive.settings.replica_of
        promoted = archive.guard.replica is not None and archive.guard.replica.promoted()
        edge = (
            archive.operations.edge_holdings(cli_principal())
            if archive.settings.forward_to
            else None
        )
    now = now_ms()
    report = {
        # What this archive is: a read-only replica of a primary, or a primary.
        "read_only_replica_of": primary if primary and not promoted else None,
        "replica": replica or None,
        "lag_seconds": round(found.lag_seconds(now), 3),
        "backlog": found.backlog,
        "held_deletes": found.held_deletes,
        "parked": found.parked,
        "last_error": found.last_error,
        "last_error_at": _when(found.last_error_at),
        "verified_seq": found.verified_seq,
        "verified_at": _when(found.verified_at),
    }
    if edge is not None:
        # An edge node (forward_to): what is here and what only the cloud holds now.
        report |= {
            "edge_local_instances": edge.local_instances,
            "edge_local_bytes": edge.local_bytes,
            "edge_evicted_instances": edge.evicted_instances,
            "edge_evicted_bytes": edge.evicted_bytes,
        }
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table("", "")
    for name, value in report.items():
        table.add_row(name.replace("_", " "), "" if value is None else str(value))
    out.print(table)


@app.command()
def retry(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Try again the entries the replica refused too often (parked), e.g. after fixing it."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        count = archive.operations.retry_replication(cli_principal())
    out.print(f"{count} parked entr{'y' if count == 1 else 'ies'} due again")


@app.command()
def promote(
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirmed already: do not ask before promoting.")
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Make this read-only replica the primary: it takes stores, deletes and corrections from
    every client again (running servers within 2 s). Recorded in the audit trail. Stop the old
    primary first, or fence it off (docs/replication.md: failover runbook)."""
    from nubis.security.authn import cli_principal

    if not yes and not typer.confirm(
        "Promote this replica to a primary? Clients may then change it; the old primary must "
        "no longer take changes"
    ):
        out.print("not promoted")
        raise typer.Exit(1)
    with open_archive(data_dir, config, set_) as archive:
        try:
            at, by = archive.operations.promote(cli_principal(), archive.settings.replica_of)
        except NubisError as exc:
            console.print(exc.reason, style="red")
            raise typer.Exit(1) from None
    out.print(f"promoted to a primary at {_when(at)} by {by}; remove replica_of from its settings")


@app.command()
def demote(
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirmed already: do not ask before demoting.")
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Make this promoted archive a read-only replica of replica_of again (fail-back: running
    servers refuse clients' changes within 2 s). Recorded in the audit trail."""
    from nubis.security.authn import cli_principal

    if not yes and not typer.confirm("Demote this archive to a read-only replica?"):
        out.print("not demoted")
        raise typer.Exit(1)
    with open_archive(data_dir, config, set_) as archive:
        primary = archive.settings.replica_of
        try:
            changed = archive.operations.demote(cli_principal(), primary)
        except NubisError as exc:
            console.print(exc.reason, style="red")
            raise typer.Exit(1) from None
    if changed:
        out.print(f"a read-only replica of {primary} again")
    else:
        out.print(f"not promoted: a read-only replica of {primary} already")
