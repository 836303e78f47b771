"""Corrections, crypto-shreds and tier moves in the replication outbox, in the change's own
commit; and the read-only replica (issue 13, docs/replication.md).

In process, on an archive of its own over SQLite: what the outbox holds after each change,
what a change that fails leaves there (nothing), and a replica's refusals (HTTP 403, DIMSE
0x0124 Refused: Not Authorized, PS3.7 Annex C) until ``nubis replication promote``. The two
servers of tests/integration/test_replication.py apply these entries at a real replica.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import select, update
from typer.testing import CliRunner

from nubis.archive import Archive
from nubis.cli.main import app
from nubis.config import load_settings
from nubis.dimse.server import DimseServer
from nubis.errors import BadRequest, Forbidden
from nubis.index import outbox_sql
from nubis.index.schema import replication_outbox, studies
from nubis.model.audit import EventID, EventType
from nubis.replication.target import reason_of
from nubis.security.policy import Principal, system_principal
from nubis.services.replica_role import ReadOnlyReplica
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets
from nubis.web.errors import error_response

WHO = system_principal()
ANNA = PatientSpec("REPL-ANNA", "Anna^A", "19700101", "F")
BORIS = PatientSpec("REPL-BORIS", "Boris^B", "19710101", "M")


def _archive(data_dir: Path, **settings: str) -> Archive:
    archive = Archive(
        load_settings(
            environ={}, overrides={"data_dir": str(data_dir), "durable": "false", **settings}
        )
    )
    archive.index.migrate()
    archive.index.open()
    archive.audit.open()
    return archive


def _store(archive: Archive, patient: PatientSpec, seed: int, who: Principal = WHO) -> str:
    [ds] = series_datasets("CT", n_instances=1, rows=16, columns=16, seed=seed, patient=patient)
    with archive.spool.writer() as writer:
        writer.write(dataset_bytes(ds))
        spooled = writer.finish()
    outcome = archive.store.store(spooled, principal=who)
    if not outcome.ok:
        raise outcome.error  # type: ignore[misc]
    return str(ds.StudyInstanceUID)


def _outbox(archive: Archive) -> list[tuple[str, str, dict[str, object]]]:
    with archive.index.reading() as conn:
        rows = conn.execute(
            select(
                replication_outbox.c.op,
                replication_outbox.c.study_uid,
                replication_outbox.c.detail,
            ).order_by(replication_outbox.c.seq)
        ).all()
    return [(op, study, json.loads(detail or "{}")) for op, study, detail in rows]


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[Archive]:
    archive = _archive(tmp_path / "primary", replicate_to="http://127.0.0.1:9/dicom-web")
    try:
        yield archive
    finally:
        archive.audit.close()
        archive.index.close()


def test_a_correction_queues_what_it_set_per_study(primary: Archive) -> None:
    first, second = _store(primary, ANNA, 1), _store(primary, ANNA, 2)
    corrected = primary.corrections.update_patient(
        WHO, ANNA.patient_id, {"PatientName": "Anna^Corrected"}, reason="misspelt"
    )
    entries = [e for e in _outbox(primary) if e[0] == "correct"]
    assert sorted(study for _, study, _ in entries) == sorted([first, second])
    for _, _, detail in entries:
        assert detail == {
            "correction": corrected.id,
            "reason": "misspelt",
            "set": {"PatientName": "Anna^Corrected"},
        }
    # A move reaches the replica as the attributes it left (the other patient's).
    primary.corrections.move_study(WHO, first, BORIS.patient_id, reason="wrong patient")
    *_, (op, study, detail) = _outbox(primary)
    assert (op, study) == ("correct", first)
    assert detail["set"] == {"PatientID": BORIS.patient_id}  # type: ignore[index]


def test_a_refused_correction_queues_nothing(primary: Archive) -> None:
    study = _store(primary, ANNA, 3)
    before = _outbox(primary)
    with pytest.raises(BadRequest):
        primary.corrections.update_study(WHO, study, {"PatientBirthDate": "not a date"}, reason="x")
    assert _outbox(primary) == before


def test_a_shred_queues_the_patient_per_study_in_its_commit(primary: Archive) -> None:
    studies = {_store(primary, ANNA, 4), _store(primary, ANNA, 5)}
    _store(primary, BORIS, 6)
    assert primary.shredding is not None
    done = primary.shredding.shred_patient(WHO, ANNA.patient_id, front_door="cli")
    assert done.keys == 1 and set(done.studies) == studies
    shreds = [e for e in _outbox(primary) if e[0] == "shred"]
    assert {s for _, s, _ in shreds} == studies
    assert all(d == {"patient": ANNA.patient_id} for _, _, d in shreds)
    # Nothing left to erase: no new entry (the first shred's travel already).
    again = primary.shredding.shred_patient(WHO, ANNA.patient_id, front_door="cli")
    assert again.keys == 0
    assert len([e for e in _outbox(primary) if e[0] == "shred"]) == len(studies)


def test_a_tier_move_is_queued_and_retired_without_reaching_the_replica(
    tmp_path: Path,
) -> None:
    """The replica keeps its own tiers: the entry keeps the study's order and is retired
    without a request (the replica of this archive, port 9, answers nothing)."""
    archive = _archive(
        tmp_path / "tiers",
        replicate_to="http://127.0.0.1:9/dicom-web",
        lifecycle="unread>30d -> cold",
    )
    try:
        study = _store(archive, ANNA, 10)
        long_ago = int(time.time() * 1000) - 90 * 86_400_000
        archive.index.write(
            lambda c: c.execute(
                update(studies).where(studies.c.study_uid == study).values(created_at=long_ago)
            )
        )
        archive.lifecycle.run()
        *_, (op, uid, detail) = _outbox(archive)
        assert (op, uid, detail) == ("tier", study, {"tier": "cold"})
        with archive.index.reading() as conn:
            entries = outbox_sql.entries_of(conn, "default", study, 10)
        assert archive.replicator._apply_one(entries[-1])
        assert [e[0] for e in _outbox(archive)] == ["store"]
    finally:
        archive.audit.close()
        archive.index.close()


def test_no_replica_no_outbox(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "alone")
    try:
        _store(archive, ANNA, 7)
        archive.corrections.update_patient(WHO, ANNA.patient_id, {"PatientSex": "O"}, reason="r")
        assert archive.shredding is not None
        archive.shredding.shred_patient(WHO, ANNA.patient_id, front_door="cli")
        assert _outbox(archive) == []
    finally:
        archive.audit.close()
        archive.index.close()


def test_a_read_only_replica_refuses_changes_until_promoted(tmp_path: Path) -> None:
    data_dir = tmp_path / "replica"
    replica = _archive(
        data_dir, replica_of="https://primary.example.org", replica_writer="replicator"
    )
    try:
        writer = Principal("replicator", "default", frozenset({"admin"}), auth_method="apikey")
        clerk = Principal("clerk", "default", frozenset({"admin"}), auth_method="apikey")
        study = _store(replica, ANNA, 8, who=writer)  # the primary's replication
        with pytest.raises(ReadOnlyReplica) as refused:
            _store(replica, BORIS, 9, who=clerk)
        assert isinstance(refused.value, Forbidden)
        assert (refused.value.http_status, refused.value.dimse_status) == (403, 0x0124)
        assert "read-only replica of https://primary.example.org" in refused.value.reason
        for change in (
            lambda: replica.corrections.update_study(clerk, study, {"PatientSex": "O"}, reason="r"),
            lambda: replica.maintenance.delete(clerk, study),
            lambda: (
                replica.shredding
                and replica.shredding.shred_patient(clerk, ANNA.patient_id, front_door="web")
            ),
        ):
            with pytest.raises(ReadOnlyReplica):
                change()
        # Reads work; the corrections the primary sends go through.
        assert replica.retrieve.instances(clerk, study)
        replica.corrections.update_study(writer, study, {"PatientSex": "O"}, reason="replicated")
        refusals = [
            r.event
            for r in replica.audit.scan(0, 10_000)
            if r.event.event_id == EventID.SECURITY_ALERT
            and EventType.USE_OF_RESTRICTED_FUNCTION in r.event.event_types
        ]
        assert len(refusals) == 4
    finally:
        replica.audit.close()
        replica.index.close()

    args = ["--data-dir", str(data_dir), "--set", "durable=false"]
    args += ["--set", "replica_of=https://primary.example.org"]
    promoted = CliRunner().invoke(app, ["replication", "promote", "--yes", *args])
    assert promoted.exit_code == 0, promoted.output
    assert "promoted to a primary" in promoted.output
    status = CliRunner().invoke(app, ["replication", "status", "--json", *args])
    assert json.loads(status.output)["read_only_replica_of"] is None

    replica = _archive(data_dir, replica_of="https://primary.example.org")
    try:
        _store(replica, BORIS, 9, who=clerk)  # a primary now
        alerts = [
            r.event
            for r in replica.audit.scan(0, 10_000)
            if EventType.SECURITY_CONFIGURATION in r.event.event_types
            and "promoted" in (r.event.outcome_description or "")
        ]
        assert len(alerts) == 1
    finally:
        replica.audit.close()
        replica.index.close()

    # A fail-back: read-only again.
    demoted = CliRunner().invoke(app, ["replication", "demote", "--yes", *args])
    assert demoted.exit_code == 0, demoted.output
    replica = _archive(data_dir, replica_of="https://primary.example.org")
    try:
        with pytest.raises(ReadOnlyReplica):
            _store(replica, BORIS, 12, who=clerk)
    finally:
        replica.audit.close()
        replica.index.close()


def test_a_replica_refuses_c_store_not_authorized(tmp_path: Path) -> None:
    """A modality sending to the replica gets 0x0124 Refused: Not Authorized (PS3.7 Annex C, a
    status of every DIMSE service beside PS3.4 B.2.3's own), nothing stored."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    replica = _archive(
        tmp_path / "replica", replica_of="https://primary.example.org", dimse_port=str(port)
    )
    server = DimseServer(replica)
    server.start()
    try:
        [ds] = series_datasets("CT", n_instances=1, rows=16, columns=16, seed=11, patient=ANNA)
        ae = AE("MODALITY")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="NUBIS")
        assert assoc.is_established
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        assert status.Status == 0x0124
        assert "read-only replica" in status.ErrorComment
        assert replica.index.counts()["instances"] == 0
    finally:
        server.stop()
        replica.audit.close()
        replica.index.close()


def test_the_primary_keeps_the_replicas_reason_for_a_refused_key() -> None:
    """A replica that refuses the primary's key (401/403) stops the pass; the reason it gave,
    as nubis.web.errors words it, becomes the status's last error (a replica_writer that
    names another user reads as such, not as a bare 403)."""
    refused = ReadOnlyReplica("this archive is a read-only replica of https://a.example")
    body = bytes(error_response(403, refused.reason, refused.dimse_status).body)
    assert reason_of(body) == refused.reason
    assert reason_of(b"<html>proxy error</html>") == ""


def test_promoting_what_is_no_replica_is_refused(tmp_path: Path) -> None:
    args = ["--data-dir", str(tmp_path / "primary"), "--set", "durable=false"]
    result = CliRunner().invoke(app, ["replication", "promote", "--yes", *args])
    assert result.exit_code == 1
    assert "not a replica" in result.output
