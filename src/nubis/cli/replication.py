"""``nubis replication``: how far behind the replica is (status), and retrying what it refused.

Both read and write the index through the operations service, so they work the same from any
machine that reaches the index, with the servers running or not (docs/replication.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import typer
from rich.table import Table

from nubis.cli.common import AsJson, Config, DataDir, Set, open_archive
from nubis.cli.output import out

app = typer.Typer(
    help="Replication to another nubis: status (lag, backlog, errors), retry.",
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
    deletes, parked entries, the last error and the last verified point."""
    from nubis.jobs.store import now_ms
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.operations.replication_status(cli_principal())
        replica = archive.settings.replicate_to
    now = now_ms()
    report = {
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
