"""``nubis keys``: the keys of encryption at rest (list, rotate, retire, shred a patient's keys).

``rotate`` adds a key-encryption key version that new objects use at once; objects already
stored keep naming the version they were written with, so nothing is rewritten. Running
workers pick the change up on their next read of the keyring. With an index keyring
(``keyring = index+file://...``) the KEKs are in a secret nubis only reads: ``new-secret`` and
``rotate`` write secret content (to stdout or ``--out``) for the operator to give every node.
``retire`` re-wraps what an old KEK wraps under the current one and removes the old one (from
the local keyring; from the secret it writes) once nothing needs it. Stored objects whose
header names it keep needing it until ``retire --rewrap`` re-encrypts them: a ``rewrap`` job
(nubis.services.kek_rewrap) that writes each one anew under the current KEK and swaps it in,
run by this command unless a running server takes it first, and shown in ``nubis jobs list``.

``shred-patient`` deletes every key of one patient (crypto-shredding): all their stored
objects, and every copy or backup of them, become unreadable for good (HTTP 410). A study a
correction moved is re-keyed under the patient it is filed under (the ``rekey`` job,
nubis.services.study_rekey); until that is done for every study moved into or out of the
patient, the shred is refused, naming the job to wait for. It does not
remove their rows from the index: DICOMweb DELETE of the studies is the supported way to erase
those (it removes the rows and their blobs, and is audited as Study Deleted); the shred is what
reaches copies and backups.

Shredding is the most destructive act in the archive, so it is confirmed by typing the Patient
ID (or ``--yes``), authorized as key administration plus delete, and recorded before it
happens (Security Alert, Security Configuration) and after (DICOM Study Deleted with the
outcome, the patient and the studies still indexed; PS3.15 A.5.3.5). When the first record
cannot be written nothing is shredded (fail closed). The operator recorded is the OS account
the command runs as (effective uid, never $USER), with the login user and sudo's SUDO_USER
when they differ, and the host name.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nubis.cli.common import Config, DataDir, Set, follow_job, load, open_archive
from nubis.cli.output import console, out

if TYPE_CHECKING:
    from nubis.archive import Archive
    from nubis.jobs.store import Job
    from nubis.model.audit import EventOutcome
    from nubis.ports.keys import KeyProvider
    from nubis.security.policy import Principal


app = typer.Typer(
    help="Keys of encryption at rest: list, rotate, retire (--rewrap), shred-patient, new-secret.",
    no_args_is_help=True,
)

Out = Annotated[
    Path | None,
    typer.Option("--out", help="Write the KEK secret to this new file (mode 0600), not stdout."),
]
Rewrap = Annotated[
    bool,
    typer.Option(
        "--rewrap",
        help="First re-encrypt every stored object whose header names the KEK under the "
        "current one (a rewrap job: run here unless a server takes it; resumable).",
    ),
]


def _provider(
    data_dir: Path | None, config: Path | None, set_: list[str] | None, *, create: bool
) -> KeyProvider:
    from nubis.crypto.registry import open_key_provider
    from nubis.errors import NubisError
    from nubis.index.database import Index

    settings = load(config, {"data_dir": data_dir}, set_)
    try:
        return open_key_provider(
            settings.keyring_url,
            durable=settings.durable,
            create=create,
            index=Index(settings.index_url, durable=settings.durable),  # opened only if used
        )
    except NubisError as exc:
        console.print(exc.reason, style="red")
        raise typer.Exit(2) from None


@app.command("list")
def list_keys(data_dir: DataDir = None, config: Config = None, set_: Set = None) -> None:
    """Key-encryption key versions, oldest first; the current one is marked."""
    keys = _provider(data_dir, config, set_, create=False)
    current = keys.current_key_id
    for key_id in keys.key_ids():
        out.print(f"{key_id}{'  (current)' if key_id == current else ''}")


@app.command()
def rotate(
    out_file: Out = None, data_dir: DataDir = None, config: Config = None, set_: Set = None
) -> None:
    """Add a key-encryption key version; new objects use it, old ones stay readable.

    Index keyring: writes the secret with one more KEK, to give every node (a node re-reads a
    changed secret file by itself). Until a node has it, that node cannot read objects that
    nodes which have it wrote since (HTTP 424): roll it out at once.
    """
    from nubis.crypto.index_keys import IndexKeyring

    keys = _provider(data_dir, config, set_, create=True)
    if isinstance(keys, IndexKeyring):
        secret = keys.secret.get().rotated()
        _write_secret(secret.render(), out_file)
        console.print(
            f"secret with new key-encryption key {secret.current} written; new objects use it "
            "on each node once that node has it"
        )
        return
    key_id = keys.rotate()
    out.print(f"new objects are now encrypted under key {key_id}")


@app.command("new-secret")
def new_secret(out_file: Out = None) -> None:
    """A new KEK secret for an index keyring (ref key and KEK k1), for a new archive."""
    from nubis.crypto.index_keys import KekSecret

    _write_secret(KekSecret.new().render(), out_file)
    console.print(
        "give it to every node, read-only, e.g. keyring = index+file:///run/secrets/nubis-keks; "
        "keep a copy apart from the index and its backups"
    )


@app.command()
def retire(
    kek_id: Annotated[str, typer.Argument(help="The KEK version to retire, e.g. k1.")],
    rewrap: Rewrap = False,
    out_file: Out = None,
    data_dir: DataDir = None,
    config: Config = None,
    set_: Set = None,
) -> None:
    """Stop needing an old KEK: with --rewrap, re-encrypt the stored objects it wraps the data
    keys of under the current KEK; re-wrap the patient keys it wraps; then remove it if no
    stored object names it.

    --rewrap writes each object anew (fresh data key, same bytes), swaps it in and deletes the
    old blob; objects in an archive tier awaiting restore, or whose patient key was shredded,
    cannot be and keep the KEK. A local keyring drops the KEK; for an index keyring the secret
    without it is written, to give every node. Refused for the current KEK, and while any
    stored object's header still names it (its data key is wrapped under it) or cannot be read.
    Recorded in the audit trail before and after, and each re-encrypted object as well.
    """
    if out_file is not None and out_file.exists():
        console.print(f"{out_file} exists; nothing changed", style="red")
        raise typer.Exit(2)
    with _archive(data_dir, config, set_) as archive:
        _retire(archive, kek_id, out_file, rewrap=rewrap)


def _retire(archive: Archive, kek_id: str, out_file: Path | None, *, rewrap: bool) -> None:
    """Authorize, record, re-wrap, check, remove, record the outcome (fail closed, as _shred)."""
    from nubis.blobs.encrypted import EncryptedBlobStore
    from nubis.crypto.index_keys import IndexKeyring
    from nubis.crypto.local_keys import LocalKeyring
    from nubis.errors import NubisError
    from nubis.model.audit import EventOutcome, EventType
    from nubis.security import audit_events
    from nubis.security.authn import cli_login
    from nubis.security.policy import Action
    from nubis.services.kek_retirement import retire_kek

    keys, blobs = archive.keys, archive.blobs
    assert keys is not None and isinstance(blobs, EncryptedBlobStore)  # see _archive
    if kek_id not in keys.key_ids() or kek_id == keys.current_key_id:
        known = ", ".join(keys.key_ids())
        console.print(
            f"{kek_id} is not an older KEK (KEKs: {known}; the last is current)", style="red"
        )
        raise typer.Exit(2)
    operator = _operator("default")
    who = replace(audit_events.participant(operator), user_name=cli_login())
    what = f"retire key-encryption key {kek_id}"

    def record(outcome: EventOutcome, description: str) -> None:
        archive.audit.record(
            audit_events.security_alert(
                who,
                EventType.SECURITY_CONFIGURATION,
                outcome=outcome,
                description=description,
                front_door="cli",
            )
        )

    try:
        archive.guard.authorize(operator, Action.ADMIN, what)
        record(EventOutcome.SUCCESS, f"{what}: begins")
    except NubisError as exc:
        console.print(f"{exc.reason}; nothing changed", style="red")
        raise typer.Exit(1) from None
    if rewrap:
        job = _rewrap_objects(archive, kek_id)
        if job.state.value != "done":
            reason = f"rewrap job {job.id} {job.state.value}: {job.last_error or ''}"
            _quietly(record, EventOutcome.MAJOR_FAILURE, f"{what}: {reason}; kept")
            console.print(f"{reason}; {kek_id} kept", style="red")
            raise typer.Exit(1)
        result = job.result or {}
        console.print(f"rewrap job {job.id}: {result.get('rewrapped', 0)} object(s) re-encrypted")
        for problem, hint in _LEFT_BY_REWRAP.items():
            if result.get(problem):
                console.print(f"{result[problem]} object(s) {hint}", style="yellow")
    try:
        check = retire_kek(archive.index, blobs, keys, kek_id)
        if not check.needed:
            if isinstance(keys, LocalKeyring):
                keys.remove_kek(kek_id)
            elif isinstance(keys, IndexKeyring):
                _write_secret(keys.secret.get().without(kek_id).render(), out_file)
    except NubisError as exc:
        _quietly(record, EventOutcome.MAJOR_FAILURE, f"{what}: {exc.reason}")
        console.print(exc.reason, style="red")
        raise typer.Exit(1) from None
    done = f"{what}: {check.rewrapped} patient key(s) re-wrapped under the current KEK"
    if check.needed:
        still = (
            f"still needed by {check.objects} stored object(s) whose header names it, "
            f"{check.patient_keys} patient key(s), {check.unchecked} unreadable header(s); kept"
        )
        _quietly(record, EventOutcome.MINOR_FAILURE, f"{done}; {still}")
        console.print(f"{check.rewrapped} patient key(s) re-wrapped under the current KEK")
        console.print(f"{kek_id} {still}", style="red")
        if check.objects and not rewrap:
            console.print(
                f"--rewrap re-encrypts those objects: nubis keys retire {kek_id} --rewrap"
            )
        raise typer.Exit(1)
    where = (
        "removed from the keyring"
        if isinstance(keys, LocalKeyring)
        else "left out of the new secret"
    )
    if not _quietly(record, EventOutcome.SUCCESS, f"{done}; nothing needs it; {where}"):
        console.print(f"{kek_id} {where}, but the outcome could not be recorded", style="red")
        raise typer.Exit(1)
    console.print(f"{check.rewrapped} patient key(s) re-wrapped; nothing needs {kek_id}: {where}")
    if isinstance(keys, IndexKeyring):
        console.print(f"give every node the new secret; then {kek_id} can be destroyed")


# What a rewrap job leaves naming the KEK, and what the operator can do about it.
_LEFT_BY_REWRAP = {
    "awaiting_restore": "in an archive tier await their restore (requested): retire again later",
    "erased": "belong to shredded patients (unreadable for good): DELETE them to let the KEK go",
    "abandoned": "took too long to swap in safely: retire --rewrap again",
    "missing": "have no blob (see nubis jobs show, and the verify job)",
    "unreadable": "fail their integrity check (see nubis jobs show, and the verify job)",
    "key_mismatch": "would change patient key and were kept (see the log)",
}


def _rewrap_objects(archive: Archive, kek_id: str) -> Job:
    """Run the rewrap job of ``kek_id`` to its end (one already queued or running, else a new
    one): here, unless a server's runner takes it first; either way its progress is shown."""
    from nubis.jobs.runner import JobRunner
    from nubis.jobs.store import JobState
    from nubis.security.authn import os_account

    assert archive.rewrap is not None  # an encrypted archive: see _archive
    pending = [
        job
        for job in archive.jobs.list(kind="rewrap", states=[JobState.QUEUED, JobState.RUNNING])
        if job.params.get("kek_id") == kek_id
    ]
    job_id = (
        pending[-1].id
        if pending
        else archive.jobs.enqueue("rewrap", {"kek_id": kek_id}, created_by=f"cli:{os_account()}")
    )
    assert job_id is not None
    console.print(f"rewrap job {job_id}: re-encrypting the objects whose header names {kek_id}")
    runner = JobRunner(
        archive.jobs,
        {"rewrap": archive.rewrap.run},
        lease_seconds=archive.settings.jobs_lease_seconds,
        poll_seconds=1.0,
    )
    runner.start()
    try:
        return follow_job(archive.jobs, job_id)
    finally:
        runner.stop()  # an interrupted job goes back to the queue and resumes where it was


def _quietly(
    record: Callable[[EventOutcome, str], None], outcome: EventOutcome, description: str
) -> bool:
    """Record an outcome; False if the trail refused it (the act is done either way)."""
    from nubis.errors import NubisError

    try:
        record(outcome, description)
    except NubisError:
        return False
    return True


def _write_secret(text: str, out_file: Path | None) -> None:
    """``text`` to a new file of mode 0600, or to stdout (never through rich: no markup)."""
    if out_file is None:
        sys.stdout.write(text)
        return
    try:
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        console.print(f"{out_file} exists: a KEK secret is never overwritten", style="red")
        raise typer.Exit(2) from None
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


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
            console.print(
                "not confirmed: the Patient ID typed differs; nothing shredded", style="red"
            )
            raise typer.Exit(1)
    with _archive(data_dir, config, set_) as archive:
        _shred(archive, partition, patient_id)


def _shred(archive: Archive, partition: str, patient_id: str) -> None:
    """Through the shred service (nubis.services.shredding): authorize, record, shred, record
    the outcome (the order is what makes it fail closed)."""
    from nubis.errors import NubisError
    from nubis.security import audit_events
    from nubis.security.authn import cli_login
    from nubis.services.shredding import KeyringFailed

    assert archive.shredding is not None  # _archive refuses an archive without a keyring
    operator = _operator(partition)
    who = replace(audit_events.participant(operator), user_name=cli_login())
    try:
        done = archive.shredding.shred_patient(
            operator, patient_id, front_door="cli", participant=who
        )
    except KeyringFailed as exc:
        console.print(exc.reason, style="red")
        raise typer.Exit(1) from None
    except NubisError as exc:
        console.print(f"{exc.reason}; nothing shredded", style="red")
        raise typer.Exit(1) from None
    if done.keys == 0:
        console.print("no key of that patient in the keyring (nothing stored, or already shredded)")
        raise typer.Exit(1)
    if not done.outcome_recorded:
        console.print(
            f"shredded {done.keys} patient key(s), but the outcome could not be recorded; "
            f"audit record {done.begun_seq} holds the attempt",
            style="red",
        )
        raise typer.Exit(1)
    out.print(f"shredded {done.keys} patient key(s); the patient's objects are now unreadable")
    if done.certificate_id is not None:
        out.print(f"erasure certificate {done.certificate_id} (nubis retention certificates show)")
    if done.studies:
        out.print(
            f"{len(done.studies)} study(ies) of the patient are still in the index (searchable, "
            "answering 410): DELETE them through DICOMweb to erase them"
        )


def _operator(partition: str) -> Principal:
    from nubis.security.authn import cli_principal

    return cli_principal(partition).with_request(peer=socket.gethostname(), request_id=None)


@contextmanager
def _archive(
    data_dir: Path | None, config: Path | None, set_: list[str] | None
) -> Iterator[Archive]:
    """The archive (open_archive) of an archive that has a keyring."""
    from nubis.crypto.registry import keyring_exists

    settings = load(config, {"data_dir": data_dir}, set_)
    # Opening an archive would make a keyring (and an index) where none is: a mistyped
    # --data-dir must say so, not shred nothing in a new empty archive.
    if not keyring_exists(settings.keyring_url):
        console.print(
            f"no keyring at {settings.keyring_url}: nothing was ever encrypted here", style="red"
        )
        raise typer.Exit(2)
    with open_archive(settings=settings) as archive:
        yield archive
