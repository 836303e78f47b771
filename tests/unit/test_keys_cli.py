"""``nubis keys shred-patient``: confirmed, authorized, audited before and after, fail closed.

Crypto-shredding is the most destructive act of the archive. HIPAA 164.312(b) (audit controls)
and PS3.15 A.5.3 want it recorded with who, what, which patient and the outcome; an act that
could not be recorded must not happen (the trail fails closed, docs/architecture.md).
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nubis.archive import Archive
from nubis.cli.main import app
from nubis.config import load_settings
from nubis.errors import KeyErased
from nubis.model.audit import AuditEvent, EventID, EventOutcome, EventType, ObjectRole
from nubis.security.audit import AuditTrail, AuditUnavailable
from nubis.security.policy import Principal
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets

DOOMED = PatientSpec("SHRED-1", "Doomed^Dora", "19700101", "F")
KEPT = PatientSpec("KEEP-1", "Kept^Karl", "19700101", "M")


class Data:
    """An archive on disk holding two series of DOOMED and one of KEPT, stored by the CLI."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "data"
        self.args = ["--data-dir", str(self.dir), "--set", "durable=false"]
        files = root / "in"
        files.mkdir()
        self.studies: dict[str, str] = {}
        for n, (patient, accession) in enumerate([(DOOMED, "A1"), (DOOMED, "A2"), (KEPT, "A3")]):
            for ds in series_datasets(
                "CT", n_instances=1, patient=patient, seed=70 + n, accession=accession
            ):
                (files / f"{n}.dcm").write_bytes(dataset_bytes(ds))
                self.studies[str(ds.StudyInstanceUID)] = patient.patient_id
        assert run(["import", str(files), *self.args]).exit_code == 0

    def studies_of(self, patient: PatientSpec) -> list[str]:
        return sorted(s for s, p in self.studies.items() if p == patient.patient_id)

    def archive(self) -> Archive:
        settings = load_settings(
            environ={}, overrides={"data_dir": str(self.dir), "durable": "false"}
        )
        archive = Archive(settings)
        archive.index.open()
        archive.audit.open()
        return archive

    def readable(self, patient: PatientSpec) -> bool:
        """Whether the objects of ``patient`` still decrypt (through the retrieve service)."""
        from nubis.security.authn import cli_principal

        archive = self.archive()
        try:
            for study in self.studies_of(patient):
                for inst in archive.retrieve.instances(cli_principal(), study):
                    archive.retrieve.read(inst, 0, 132)
        except KeyErased:
            return False
        finally:
            archive.audit.close()
            archive.index.close()
        return True

    def events(self) -> list[AuditEvent]:
        archive = self.archive()
        try:
            return [r.event for r in archive.audit.scan(0, 10_000)]
        finally:
            archive.audit.close()
            archive.index.close()


def run(args: list[str], stdin: str | None = None) -> object:
    return CliRunner().invoke(app, args, input=stdin)


@pytest.fixture
def data(tmp_path: Path) -> Data:
    return Data(tmp_path)


def shred(data: Data, *extra: str, stdin: str | None = None) -> object:
    return run(["keys", "shred-patient", DOOMED.patient_id, *extra, *data.args], stdin=stdin)


def shred_events(events: list[AuditEvent]) -> list[AuditEvent]:
    return [
        e
        for e in events
        if e.event_id == EventID.STUDY_DELETED
        or (
            e.event_id == EventID.SECURITY_ALERT
            and EventType.SECURITY_CONFIGURATION in e.event_types
        )
    ]


def test_confirmation_is_the_patient_id_typed_again(data: Data) -> None:
    for answer in ("y", "yes", "", "shred-1", "SHRED-1 "):
        result = shred(data, stdin=answer + "\n")
        assert result.exit_code == 1, result.output  # type: ignore[attr-defined]
        assert "nothing shredded" in result.output  # type: ignore[attr-defined]
    assert data.readable(DOOMED)
    assert shred_events(data.events()) == []
    result = shred(data, stdin=DOOMED.patient_id + "\n")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert not data.readable(DOOMED) and data.readable(KEPT)


def test_shred_is_recorded_before_and_after(data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    """PS3.15 A.5.3.5 (DICOM Study Deleted) and A.5.3.11 (Security Alert); HIPAA 164.312(b)."""
    # $USER is the caller's to set: the record names the account the process runs as.
    monkeypatch.setenv("USER", "mallory")
    monkeypatch.setenv("LOGNAME", "mallory")
    # sudo's word for who ran it is kept, labelled as the environment's claim.
    monkeypatch.setenv("SUDO_USER", "alice")
    result = shred(data, "--yes")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "still in the index" in result.output  # type: ignore[attr-defined]
    begun, ended = shred_events(data.events())
    account = pwd.getpwuid(os.geteuid()).pw_name
    for event in (begun, ended):
        who = event.requestor
        assert who.user_id == f"cli:{account}" and "mallory" not in str(who)
        assert "SUDO_USER=alice" in (who.user_name or "")
        assert who.network_access_point == socket.gethostname()
        assert event.front_door == "cli"
        assert event.patient_ids == [DOOMED.patient_id]
    assert begun.event_id == EventID.SECURITY_ALERT
    assert begun.outcome is EventOutcome.SUCCESS and "begins" in (begun.outcome_description or "")
    assert ended.event_id == EventID.STUDY_DELETED and ended.outcome is EventOutcome.SUCCESS
    assert "1 patient key(s) erased" in (ended.outcome_description or "")
    studies = sorted(o.object_id for o in ended.objects if o.role is ObjectRole.REPORT)
    assert studies == data.studies_of(DOOMED)
    assert not data.readable(DOOMED) and data.readable(KEPT)


def test_nothing_to_shred_is_recorded_as_a_minor_failure(data: Data) -> None:
    assert shred(data, "--yes").exit_code == 0  # type: ignore[attr-defined]
    again = shred(data, "--yes")
    assert again.exit_code == 1  # type: ignore[attr-defined]
    ended = shred_events(data.events())[-1]
    assert ended.event_id == EventID.STUDY_DELETED
    assert ended.outcome is EventOutcome.MINOR_FAILURE


@pytest.fixture
def failing_trail(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[AuditEvent]]:
    """The audit trail refuses every record of the shred itself (the index is full, say)."""
    refused: list[AuditEvent] = []
    record = AuditTrail.record

    def flaky(self: AuditTrail, event: AuditEvent):  # type: ignore[no-untyped-def]
        if shred_events([event]):
            refused.append(event)
            raise AuditUnavailable("the audit trail is down")
        return record(self, event)

    monkeypatch.setattr(AuditTrail, "record", flaky)
    yield refused


def test_no_record_no_shred(data: Data, failing_trail: list[AuditEvent]) -> None:
    """Fail closed (HIPAA 164.312(b)): the keys stay when the attempt cannot be recorded."""
    result = shred(data, "--yes")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "nothing shredded" in result.output  # type: ignore[attr-defined]
    assert [e.event_id for e in failing_trail] == [EventID.SECURITY_ALERT]
    assert data.readable(DOOMED)


def test_an_unrecorded_outcome_is_reported(data: Data, monkeypatch: pytest.MonkeyPatch) -> None:
    record = AuditTrail.record

    def outcome_fails(self: AuditTrail, event: AuditEvent):  # type: ignore[no-untyped-def]
        if event.event_id == EventID.STUDY_DELETED:
            raise AuditUnavailable("the audit trail is down")
        return record(self, event)

    monkeypatch.setattr(AuditTrail, "record", outcome_fails)
    result = shred(data, "--yes")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    assert "could not be recorded" in result.output  # type: ignore[attr-defined]
    # The shred did happen, and the record written before it says it was attempted.
    assert not data.readable(DOOMED)
    [begun] = shred_events(data.events())
    assert begun.event_id == EventID.SECURITY_ALERT


def test_a_role_without_key_administration_is_refused_and_recorded(
    data: Data, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PS3.15 A.5.3.11 Use of Restricted Function; HIPAA 164.312(a)(1) access control."""
    import nubis.cli.keys

    def radiologist(partition: str) -> Principal:
        return Principal("cli:someone", partition, frozenset({"radiologist"}), via="cli")

    monkeypatch.setattr(nubis.cli.keys, "_operator", radiologist)
    result = shred(data, "--yes")
    assert result.exit_code == 1  # type: ignore[attr-defined]
    events = data.events()
    refusal = events[-1]
    assert refusal.event_id == EventID.SECURITY_ALERT
    assert EventType.USE_OF_RESTRICTED_FUNCTION in refusal.event_types
    assert "crypto-shred" in (refusal.outcome_description or "")
    assert shred_events(events) == []
    assert data.readable(DOOMED)


def test_a_folder_without_a_keyring_is_refused_untouched(tmp_path: Path) -> None:
    empty = tmp_path / "typo"
    result = run(["keys", "shred-patient", "X", "--yes", "--data-dir", str(empty)])
    assert result.exit_code == 2  # type: ignore[attr-defined]
    assert "no keyring" in result.output  # type: ignore[attr-defined]
    assert not empty.exists()


def test_a_shred_waits_for_the_rekey_of_a_moved_study(data: Data) -> None:
    """A study moved from DOOMED to KEPT is under DOOMED's key until its rekey job has run:
    a shred of either patient is refused until then, naming the job; afterwards DOOMED's
    shred leaves the study that is KEPT's now (docs/corrections.md)."""
    moved, stays = data.studies_of(DOOMED)
    result = run(
        ["studies", "move", "--study", moved, "--to-patient", KEPT.patient_id,
         "--reason", "mis-filed", *data.args]
    )  # fmt: skip
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    for patient in (DOOMED, KEPT):
        refused = run(["keys", "shred-patient", patient.patient_id, "--yes", *data.args])
        assert refused.exit_code == 1  # type: ignore[attr-defined]
        output = " ".join(refused.output.split())  # type: ignore[attr-defined]
        assert "still being re-keyed" in output and "nothing shredded" in output, output
        assert "Wait for job " in output, output
    assert run(["jobs", "work", "--once", *data.args]).exit_code == 0  # type: ignore[attr-defined]

    result = shred(data, "--yes")
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    data.studies[moved] = KEPT.patient_id  # as filed now
    assert data.readable(KEPT) and not data.readable(DOOMED)
    assert data.studies_of(DOOMED) == [stays]
