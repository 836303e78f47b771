"""``nubis studies``: correct patient and study attributes, merge patients, undo, history;
place and release legal holds (docs/retention.md).

Works on the index directly (the server may be running: a correction is index rows, which
every node reads at the next request). The operator acts as an admin of ``--tenant``
(``cli_principal``) through the same correction service as ``POST /corrections``, so each
change is recorded alike (Patient Record and DICOM Instances Accessed, EventActionCode U).
Stored objects are never rewritten (docs/corrections.md).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nubis.cli.common import AsJson, Config, DataDir, Set, open_archive
from nubis.cli.output import out

if TYPE_CHECKING:
    from nubis.index.holds_sql import Hold
    from nubis.services.corrections import Correction

app = typer.Typer(
    help="Corrections: update patient/study attributes, move a study, merge patients, undo; "
    "legal holds: hold, release, holds.",
    no_args_is_help=True,
)

Tenant = Annotated[str, typer.Option(help="Tenant whose studies these are.")]
Reason = Annotated[str, typer.Option("--reason", help="Why (required; kept and audited).")]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="ATTRIBUTE=VALUE (keyword or tag; DICOM text, '\\' between values; "
        "ATTRIBUTE= empties it). Repeatable.",
    ),
]


def _changes(pairs: list[str] | None) -> dict[str, str | None]:
    changes: dict[str, str | None] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"--set wants ATTRIBUTE=VALUE, got {name[:40]!r}")
        changes[name.strip()] = value or None
    return changes


def _show(correction: Correction, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(correction.to_dict()))
        return
    undone = f", undone by {correction.undone_by}" if correction.undone_by else ""
    undoes = f" of correction {correction.undoes}" if correction.undoes else ""
    out.print(
        f"correction {correction.id} ({correction.kind}{undoes}{undone}) by "
        f"{correction.created_by} at {_when(correction.created_at)}: {correction.reason}"
    )
    for uid, changed in correction.changed.items():
        out.print(f"  study {uid}")
        for name, values in changed.items():
            out.print(f"    {name}: {values['before'] or ''!r} -> {values['after'] or ''!r}")


def _when(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command("correct")
def correct(
    study: Annotated[str | None, typer.Option(help="The study to correct.")] = None,
    patient: Annotated[
        str | None, typer.Option(help="Correct every study of this Patient ID instead.")
    ] = None,
    set_attr: Sets = None,
    reason: Reason = "",
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Set patient or study attributes of one study (--study) or of a patient's studies."""
    from nubis.security.authn import cli_principal

    if (study is None) == (patient is None):
        raise typer.BadParameter("give --study or --patient (one of them)")
    changes = _changes(set_attr)
    with open_archive(data_dir, config, set_) as archive:
        who = cli_principal(tenant)
        if study is not None:
            done = archive.corrections.update_study(who, study, changes, reason=reason)
        else:
            assert patient is not None
            done = archive.corrections.update_patient(who, patient, changes, reason=reason)
    _show(done, as_json)


@app.command("move")
def move(
    study: Annotated[str, typer.Option(help="The mis-filed study.")],
    to_patient: Annotated[str, typer.Option(help="The Patient ID it belongs to.")],
    set_attr: Sets = None,
    reason: Reason = "",
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """File a study under another patient (its patient attributes become that patient's)."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        done = archive.corrections.move_study(
            cli_principal(tenant), study, to_patient, reason=reason, changes=_changes(set_attr)
        )
    _show(done, as_json)


@app.command("merge-patients")
def merge_patients(
    from_patient: Annotated[str, typer.Option("--from", help="The Patient ID that goes.")],
    into_patient: Annotated[str, typer.Option("--into", help="The Patient ID that stays.")],
    reason: Reason = "",
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Move every study of one patient under another (one correction, undone as one)."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        done = archive.corrections.merge_patients(
            cli_principal(tenant), from_patient, into_patient, reason=reason
        )
    _show(done, as_json)


@app.command("undo")
def undo(
    correction_id: Annotated[
        int, typer.Argument(help="The correction's id (nubis studies history).")
    ],
    reason: Reason = "",
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Undo a correction: its studies show what they showed before it."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        done = archive.corrections.undo(cli_principal(tenant), correction_id, reason=reason)
    _show(done, as_json)


@app.command("history")
def history(
    study: Annotated[str | None, typer.Option(help="Only corrections of this study.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 100,
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """The corrections made, newest first."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.corrections.history(cli_principal(tenant), study_uid=study, limit=limit)
    if as_json:
        out.print_json(json.dumps([c.to_dict() for c in found]))
        return
    table = Table("id", "kind", "when", "by", "studies", "attributes", "undone by", "reason")
    for c in found:
        names = sorted({name for changed in c.changed.values() for name in changed})
        table.add_row(
            str(c.id),
            c.kind if c.undoes is None else f"undo {c.undoes}",
            _when(c.created_at),
            c.created_by,
            str(len(c.study_uids)),
            ", ".join(names),
            str(c.undone_by or ""),
            c.reason,
        )
    out.print(table)


# ---------------------------------------------------------------------- legal holds
@app.command("hold")
def hold(
    study: Annotated[
        str | None, typer.Argument(help="The study to hold (or --patient, or --tenant-wide).")
    ] = None,
    patient: Annotated[
        str | None, typer.Option(help="Hold every study of this Patient ID, present and future.")
    ] = None,
    tenant_wide: Annotated[
        bool, typer.Option("--tenant-wide", help="Hold every study of the tenant.")
    ] = False,
    reason: Reason = "",
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Place a legal hold: nobody can delete, expire or shred what it covers until released."""
    from nubis.security.authn import cli_principal
    from nubis.services.legal_holds import HoldTarget

    if sum((study is not None, patient is not None, tenant_wide)) != 1:
        raise typer.BadParameter("give a STUDY, --patient or --tenant-wide (one of them)")
    with open_archive(data_dir, config, set_) as archive:
        placed = archive.legal_holds.place(
            cli_principal(tenant), HoldTarget(study, patient), reason
        )
    _show_hold(placed, as_json)


@app.command("release")
def release(
    hold_id: Annotated[int, typer.Argument(help="The hold's id (nubis studies holds).")],
    reason: Reason = "",
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Release a legal hold: what it covered may be deleted again (retention included)."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        released = archive.legal_holds.release(cli_principal(tenant), hold_id, reason)
    _show_hold(released, as_json)


@app.command("holds")
def holds(
    released: Annotated[bool, typer.Option(help="Also list released holds.")] = False,
    tenant: Tenant = "default",
    as_json: AsJson = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """List the tenant's legal holds (active ones unless --released)."""
    from nubis.security.authn import cli_principal

    with open_archive(data_dir, config, set_) as archive:
        found = archive.legal_holds.list(cli_principal(tenant), include_released=released)
    if as_json:
        out.print_json(json.dumps([h.to_dict() for h in found]))
        return
    table = Table("id", "on", "target", "placed", "by", "released", "reason")
    for h in found:
        table.add_row(
            str(h.id),
            h.level,
            h.study_uid or h.patient_id or "",
            _when(h.placed_at),
            h.placed_by,
            _when(h.released_at) if h.released_at else "",
            h.reason,
        )
    out.print(table)


def _show_hold(hold: Hold, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(hold.to_dict()))
        return
    target = hold.study_uid or hold.patient_id or "the whole tenant"
    state = (
        f"released by {hold.released_by} at {_when(hold.released_at)}"
        if hold.released_at
        else "active"
    )
    out.print(f"legal hold {hold.id} on the {hold.level} {target}: {state}")
