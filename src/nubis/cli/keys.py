"""``nubis keys``: the keys of encryption at rest (list, rotate, shred a patient's keys).

``rotate`` adds a key-encryption key version that new objects use at once; objects already
stored keep naming the version they were written with, so nothing is rewritten. Running
workers pick the change up on their next read of the keyring. ``shred-patient`` deletes every
key of one patient (crypto-shredding): all their stored objects, and every copy or backup of
them, become unreadable for good (HTTP 410). It does not remove their rows from the index:
delete the studies too (DELETE in DICOMweb) to erase what the index knows of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from nubis.ports.keys import KeyProvider

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
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Erase the patient's keys: every stored object of theirs becomes unreadable, for good."""
    keys = _provider(data_dir, config, set_, create=False)
    if not yes:
        typer.confirm(
            "Every object of this patient will be unreadable forever. Continue?", abort=True
        )
    count = keys.shred_patient(partition, patient_id)
    if count == 0:
        console.print("no key of that patient in the keyring (nothing stored, or already shredded)")
        raise typer.Exit(1)
    out.print(f"shredded {count} patient key(s); the patient's objects are now unreadable")
