"""``nubis keys``: the keys of encryption at rest (list, rotate, shred a patient's keys).

``rotate`` adds a key-encryption key version that new objects use at once; objects already
stored keep naming the version they were written with, so nothing is rewritten. Running
workers pick the change up on their next read of the keyring. ``shred-patient`` deletes every
key of one patient (crypto-shredding): all their stored objects, and every copy or backup of
them, become unreadable for good (HTTP 410). It does not remove their rows from the index:
DICOMweb DELETE of the studies is the supported way to erase those (it removes the rows and
their blobs, and is audited as Study Deleted); the shred is what reaches copies and backups.

Shredding is the most destructive act in the archive, so it is confirmed by typing the Patient
ID (or ``--yes``), authorized as key administration plus delete, and recorded before it
happens (Security Alert, Security Configuration) and after (DICOM Study Deleted with the
outcome, the patient and the studies still indexed; PS3.15 A.5.3.5). When the first record
cannot be written nothing is shredded (fail closed). The operator recorded is the OS account
the command runs as (effective uid, never $USER), with the login user and sudo's SUDO_USER
when they differ, and the host name.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from nubis.archive import Archive
    from nubis.model.audit import ActiveParticipant, EventOutcome
    from nubis.ports.keys import KeyProvider
    from nubis.security.policy import Principal

console = Console(stderr=True)
out = Console()

app = typer.Typer(
    help="Keys of encryption at rest: list, rotate, shred-patient.", no_args_is_help=True
)

Config = Annotated[Path | None, typer.Option("--config", help="TOML settings file.")]
Set = Annotated[list[str] | None, typer.Option("--set", help="Any setting as NAME=VALUE.")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="The archive's data folder.")]


def _provider(
    data_dir: Path | None, config: Path | None, set_: list[str] | None, *, create: bool
) -> KeyProvider:
    from nubis.cli.main import _load
    from nubis.crypto.registry import open_key_provider
    from nubis.errors import NubisError

    settings = _load(config, {"data_dir": data_dir}, set_)
    try:
        return open_key_provider(settings.keyring_url, durable=settings.durable, create=create)
    except NubisError as exc:
        console.print(f"[red]{exc.reason}")
        raise typer.Exit(2) from None


@app.command("list")
def list_keys(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Key-encryption key versions, oldest first; the current one is marked."""
    keys = _provider(data_dir, config, set_, create=False)
    current = keys.current_key_id
    for key_id in keys.key_ids():
        out.print(f"{key_id}{'  (current)' if key_id == current else ''}")


@app.command()
def rotate(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Add a key-encryption key version; new objects use it, old ones stay readable."""
    keys = _provider(data_dir, config, set_, create=True)
    key_id = keys.rotate()
    out.print(f"new objects are now encrypted under key {key_id}")


@app.command("shred-patient")
def shred_patient(
    patient_id: Annotated[str, typer.Argument(help="Patient ID (0010,0020), exactly as stored.")],
    partition: Annotated[
        str, typer.Option(help="The partition (tenant) the patient is stored in.")
    ] = "default",
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", help="Confirmed already: do not ask for the Patient ID to be typed again."
        ),
    ] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Erase the patient's keys: every stored object of theirs becomes unreadable, for good.

    Asks for the Patient ID to be typed again unless --yes. Recorded in the audit trail before
    (Security Alert) and after (DICOM Study Deleted, with the outcome); if the first record
    cannot be written nothing is shredded. The index rows stay (searchable, answering 410):
    DELETE the studies through DICOMweb as well to erase what the index knows.
    """
    if not yes:
        typed = typer.prompt(
            f"Every object of patient {patient_id!r} in partition {partition!r} becomes "
            "unreadable forever, backups included. Type the Patient ID to confirm",
            default="",
            show_default=False,
        )
        if typed != patient_id:
            console.print("[red]not confirmed: the Patient ID typed differs; nothing shredded")
            raise typer.Exit(1)
    with _archive(data_dir, config, set_) as archive:
        _shred(archive, partition, patient_id)


def _shred(archive: Archive, partition: str, patient_id: str) -> None:
    """Authorize, record, shred, record the outcome (the order is what makes it fail closed)."""
    from nubis.errors import NubisError
    from nubis.model.audit import EventOutcome, EventType
    from nubis.security import audit_events
    from nubis.security.authn import cli_login
    from nubis.security.policy import Action

    assert archive.keys is not None  # _archive refuses an archive without a keyring
    operator = _operator(partition)
    who = replace(audit_events.participant(operator), user_name=cli_login())
    what = f"crypto-shred the keys of patient {patient_id} in partition {partition}"
    try:
        # Keys and data at once: a role needs both, whatever front door offers this later.
        archive.guard.authorize(operator, Action.ADMIN | Action.DELETE, what, patient_id=patient_id)
        studies = _studies_of(archive, operator, patient_id)
        begun = archive.audit.record(
            audit_events.security_alert(
                who,
                EventType.SECURITY_CONFIGURATION,
                outcome=EventOutcome.SUCCESS,
                description=f"{what}: begins ({len(studies)} indexed study(ies))",
                front_door="cli",
                objects=[audit_events.patient_object(patient_id)],
            )
        )
    except NubisError as exc:
        console.print(f"[red]{exc.reason}; nothing shredded")
        raise typer.Exit(1) from None
    try:
        count = archive.keys.shred_patient(partition, patient_id)
    except Exception as exc:
        _outcome(archive, who, patient_id, studies, EventOutcome.MAJOR_FAILURE, f"{what}: {exc}")
        console.print(f"[red]the keyring failed: {exc}")
        raise typer.Exit(1) from None
    if count == 0:
        _outcome(
            archive,
            who,
            patient_id,
            studies,
            EventOutcome.MINOR_FAILURE,
            f"{what}: no key of that patient (nothing stored, or shredded already)",
        )
        console.print("no key of that patient in the keyring (nothing stored, or already shredded)")
        raise typer.Exit(1)
    done = (
        f"{what}: {count} patient key(s) erased; their objects are unreadable, "
        f"{len(studies)} study(ies) still indexed"
    )
    if not _outcome(archive, who, patient_id, studies, EventOutcome.SUCCESS, done):
        console.print(
            f"[red]shredded {count} patient key(s), but the outcome could not be recorded; "
            f"audit record {begun.seq} holds the attempt"
        )
        raise typer.Exit(1)
    out.print(f"shredded {count} patient key(s); the patient's objects are now unreadable")
    if studies:
        out.print(
            f"{len(studies)} study(ies) of the patient are still in the index (searchable, "
            "answering 410): DELETE them through DICOMweb to erase them"
        )


def _outcome(
    archive: Archive,
    who: ActiveParticipant,
    patient_id: str,
    studies: list[str],
    outcome: EventOutcome,
    description: str,
) -> bool:
    """Record how the shred ended (PS3.15 A.5.3.5); False if the trail refused it."""
    from nubis.errors import NubisError
    from nubis.security import audit_events

    try:
        archive.audit.record(
            audit_events.study_deleted(
                who,
                patient_id=patient_id,
                study_uids=studies,
                outcome=outcome,
                front_door="cli",
                description=description,
            )
        )
    except NubisError:
        return False
    return True


def _studies_of(archive: Archive, operator: Principal, patient_id: str) -> list[str]:
    """The Study Instance UIDs the index holds for exactly this Patient ID, for the record."""
    from nubis.model.query import Level, parse_qido

    limit = archive.settings.qido_max_limit
    query = parse_qido(
        Level.STUDY,
        [("PatientID", patient_id), ("includefield", "00100020")],
        max_limit=limit,
    )
    scoped = archive.query.scoped(operator, query, text=f"PatientID={patient_id}")
    found: list[str] = []
    offset = 0
    while True:
        page = archive.query.page(scoped.at(offset))
        for item in page.items:
            # Matching is QIDO's (a * or ? in an ID is a wildcard there); keep exact IDs only.
            if _value(item, "00100020") == patient_id:
                found.append(str(_value(item, "0020000D")))
        if not page.more or not page.items:
            return found
        offset += len(page.items)


def _value(item: dict[str, Any], tag: str) -> object:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _operator(partition: str) -> Principal:
    from nubis.security.authn import cli_principal

    return cli_principal(partition).with_request(peer=socket.gethostname(), request_id=None)


@contextmanager
def _archive(
    data_dir: Path | None, config: Path | None, set_: list[str] | None
) -> Iterator[Archive]:
    from nubis.archive import Archive
    from nubis.cli.main import _load
    from nubis.crypto.registry import keyring_exists

    settings = _load(config, {"data_dir": data_dir}, set_)
    # Opening an archive would make a keyring (and an index) where none is: a mistyped
    # --data-dir must say so, not shred nothing in a new empty archive.
    if not keyring_exists(settings.keyring_url):
        console.print(f"[red]no keyring at {settings.keyring_url}: nothing was ever encrypted here")
        raise typer.Exit(2)
    archive = Archive(settings)
    archive.index.migrate()
    archive.index.open()
    archive.audit.open()
    try:
        yield archive
    finally:
        archive.audit.close()
        archive.index.close()
