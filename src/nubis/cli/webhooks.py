"""``nubis webhooks``: subscriptions to the change feed (add, list, remove), their dead letters
(deliveries) and sending those again (replay). Through nubis.services.webhooks, as the
``/webhooks`` admin API is: authorized and recorded alike (docs/events.md).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from nubis.cli.common import AsJson, Config, DataDir, Set, open_archive
from nubis.cli.output import out

app = typer.Typer(
    help="Webhooks: subscriptions to the change feed, their dead letters, replay.",
    no_args_is_help=True,
)

Name = Annotated[str, typer.Argument(help="The subscription's name (letters, digits, . _ -).")]


def _when(ms: int | None) -> str:
    return "" if not ms else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@app.command()
def add(
    name: Name,
    url: Annotated[
        str, typer.Argument(help="The receiver: an http(s) URL the events are POSTed to.")
    ],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="The role the subscription reads the feed with (referrer: only the studies "
            "granted to webhook:NAME).",
        ),
    ] = "admin",
    event: Annotated[
        list[str] | None,
        typer.Option("--event", help="Only these event types (create, update, delete, shred)."),
    ] = None,
    modality: Annotated[
        list[str] | None, typer.Option("--modality", help="Only studies with these modalities.")
    ] = None,
    match: Annotated[
        str,
        typer.Option(
            "--match",
            help="Only studies a QIDO-RS study query finds, e.g. 'StudyDescription=*CHEST*'.",
        ),
    ] = "",
    tenant: Annotated[
        str | None,
        typer.Option("--tenant", help="The tenant whose feed it gets (default: default)."),
    ] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Subscribe a receiver; prints the signing secret, once."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        sub, secret = archive.webhooks.add(
            cli_principal(),
            name,
            url,
            role=role,
            events=event or (),
            modalities=modality or (),
            match=match,
            tenant=tenant,
        )
    out.print(f"webhook {sub.name} added; it gets the entries after {sub.cursor}")
    out.print("signing secret (shown once; verify Nubis-Signature with it):")
    out.print(secret)


@app.command("list")
def list_(
    data_dir: DataDir = None, config: Config = None, set_: Set = None, as_json: AsJson = False
) -> None:
    """The subscriptions with their filters and delivery state (never their secrets)."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.webhooks.listed(cli_principal())
    if as_json:
        out.print_json(json.dumps([s.to_dict() for s in found]))
        return
    table = Table("name", "url", "tenant", "role", "filters", "cursor", "delivered", "last error")
    for sub in found:
        d = sub.to_dict()
        filters = "; ".join(
            f"{k}={','.join(v) if isinstance(v, list) else v}"
            for k, v in (
                ("events", d["events"]),
                ("modalities", d["modalities"]),
                ("match", d["match"]),
            )
            if v
        )
        table.add_row(
            sub.name, sub.url, sub.tenant, sub.role, filters, str(sub.cursor),
            str(sub.delivered), sub.last_error or "",
        )  # fmt: skip
    out.print(table)


@app.command()
def remove(name: Name, data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Remove a subscription and its dead letters."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        archive.webhooks.remove(cli_principal(), name)
    out.print(f"webhook {name} removed")


@app.command()
def deliveries(
    name: Annotated[str | None, typer.Argument(help="One subscription (default: all).")] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
    as_json: AsJson = False,
) -> None:
    """The dead letters: entries a receiver did not take after webhook_max_attempts."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.webhooks.dead_letters(cli_principal(), name)
    if as_json:
        out.print_json(json.dumps([d.to_dict() for d in found]))
        return
    table = Table("webhook", "sequence", "attempts", "failed at", "replay", "last error")
    for d in found:
        table.add_row(
            d.subscription, str(d.seq), str(d.attempts), _when(d.failed_at),
            "asked" if d.replay else "", d.last_error or "",
        )  # fmt: skip
    out.print(table)


@app.command()
def replay(
    name: Name,
    sequence: Annotated[
        int | None, typer.Option("--sequence", help="Only the dead letter of this entry.")
    ] = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Send dead letters again: the next webhooks job tries each once more."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        count = archive.webhooks.replay(cli_principal(), name, sequence)
    out.print(f"{count} dead letter(s) of webhook {name} to be sent again by the next run")
