"""``nubis studies``: correct patient and study attributes, merge patients, undo, history.

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
    from nubis.services.corrections import Correction

app = typer.Typer(
    help="Corrections: update patient/study attributes, move a study, merge patients, undo.",
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
