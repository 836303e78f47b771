"""Retention, legal holds and erasure certificates (issue 13; docs/retention.md).

The archive runs in-process (Starlette's TestClient) with the real services, index, blob store
(encrypted at rest), audit trail and signing key; the CLI through typer's CliRunner on the
same data folder. Studies are stored by STOW-RS with chosen Study Dates and birth dates, and
the rules are evaluated as of a fixed day, so the boundaries are exact: a study whose
retention ends on that day goes, one ending the next day stays. Deletion is DELETE's path
(PS3.18 10.4 has the archive answer a DELETE it refuses with an error status; a hold's is
409, RFC 9110 15.5.10, naming the hold and nothing of the patient).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from integration import in_process_archive
from nubis.archive import Archive
from nubis.cli.main import app as cli
from nubis.jobs.runner import JobRunner
from nubis.security.policy import Principal, system_principal
from nubis.services.legal_holds import HoldTarget
from nubis.tools import synth
from nubis.web.app import create_app

ADMIN = "retention-test-admin-token-0123456789abcd"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
DICOM_TYPE = 'multipart/related; type="application/dicom"; boundary=b'


def years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


# Deleting runs are dated today at the latest (a later day is only for review).
TODAY_DATE = datetime.now(UTC).date()
TODAY = TODAY_DATE.isoformat()
# Ten years of a CT rule end today on this Study Date (on 29 February, they ended the 28th).
TEN_YEARS_AGO = years_before(TODAY_DATE, 10)
DUE_SINCE = TEN_YEARS_AGO.replace(year=TODAY_DATE.year).isoformat()
RULES = """
# Tomography images ten years after the study.
[[rule]]
name = "ct-10y"
modality = "CT"
keep_years = 10
after = "study_date"

# Children: ten years after their last study, and not before they turn 28.
[[rule]]
name = "mr-until-28"
modality = "MR"
keep_years = 10
after = "last_study"
until_age = 28
"""


@dataclass
class World:
    client: TestClient
    archive: Archive
    data_dir: Path
    seed: int = 9100

    def store(self, modality: str, patient: str, study_date: str, birth: str = "19600101") -> str:
        self.seed += 1
        spec = synth.PatientSpec(patient, "Doe^Held", birth, "F")
        datasets = list(
            synth.series_datasets(
                modality if modality in ("CT", "MR") else "CT",
                n_instances=2,
                rows=16,
                columns=16,
                seed=self.seed,
                patient=spec,
            )
        )
        body = b""
        for ds in datasets:
            ds.StudyDate, ds.Modality = study_date, modality
            body += b"--b\r\nContent-Type: application/dicom\r\n\r\n" + synth.dataset_bytes(ds)
            body += b"\r\n"
        answer = self.client.post(
            "/dicom-web/studies",
            content=body + b"--b--\r\n",
            headers={**AUTH, "Content-Type": DICOM_TYPE},
        )
        assert answer.status_code == 200, answer.text
        return str(datasets[0].StudyInstanceUID)

    def sql(self, statement: str, *args: object) -> list[tuple[object, ...]]:
        with closing(sqlite3.connect(self.data_dir / "index.sqlite")) as db, db:
            return db.execute(statement, args).fetchall()

    def studies(self) -> set[str]:
        return {str(uid) for (uid,) in self.sql("SELECT study_uid FROM studies")}

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(cli, [*args, "--data-dir", str(self.data_dir)])
        return result.exit_code, result.output

    def run(self, *extra: str) -> dict[str, object]:
        code, output = self.cli("retention", "run", "--today", TODAY, *extra)
        assert code == 0, output
        return dict(json.loads(output[output.index("{") :]))


def _da(day: date) -> str:
    return day.strftime("%Y%m%d")


def _tomorrow() -> str:
    return (TODAY_DATE + timedelta(days=1)).isoformat()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data_dir = tmp_path_factory.mktemp("retention") / "data"
    data_dir.mkdir()
    (data_dir / "retention.toml").write_text(RULES)
    # No background runner: the tests run the jobs they queue themselves.
    archive = in_process_archive(data_dir, ADMIN, jobs="false")
    with TestClient(create_app(archive)) as client:
        yield World(client, archive, data_dir)


def test_retention_deletes_what_is_due_and_nothing_else(world: World) -> None:
    due = world.store("CT", "RET-1", _da(TEN_YEARS_AGO))  # ten years end today: due
    kept = world.store("CT", "RET-2", _da(TEN_YEARS_AGO + timedelta(days=1)))  # tomorrow: kept
    # A child: ten years after the last study are past, but they turn 28 in 13 years: kept.
    child = world.store(
        "MR", "RET-3", _da(years_before(TODAY_DATE, 12)), birth=_da(years_before(TODAY_DATE, 15))
    )
    uncovered = world.store("US", "RET-4", "19900101")  # no rule covers it: kept for ever
    digests = {
        str(sop): str(sha)
        for sop, sha in world.sql(
            "SELECT i.sop_instance_uid, i.sha256 FROM instances i JOIN series s "
            "ON i.series_pk = s.id JOIN studies t ON s.study_pk = t.id WHERE t.study_uid = ?",
            due,
        )
    }
    assert len(digests) == 2
    before = world.studies()

    # The review list and a dry run name the due study and delete nothing.
    code, output = world.cli("retention", "report", "--json")
    assert code == 0, output
    report = json.loads(output)
    assert [d["study_uid"] for d in report["due"]] == [due]
    assert report["due"][0] == {
        "tenant": "default", "study_uid": due, "rule": "ct-10y", "due_since": DUE_SINCE,
    }  # fmt: skip
    # Reviewed a day ahead, the one kept until tomorrow is listed too.
    code, output = world.cli("retention", "report", "--json", "--today", _tomorrow())
    assert code == 0, output
    assert {d["study_uid"] for d in json.loads(output)["due"]} == {due, kept}
    # A deleting run cannot be dated ahead: it fails and deletes nothing.
    code, output = world.cli("retention", "run", "--today", _tomorrow())
    assert code == 1 and "cannot be dated ahead" in output, output
    dry = world.run("--dry-run")
    assert dry["dry_run"] is True and dry["due"] == 1 and dry["erased"] == 0
    assert world.studies() == before

    done = world.run()
    assert done["erased"] == 1 and done["approved_by"].startswith("cli:")  # type: ignore[union-attr]
    assert world.studies() == before - {due}
    assert {kept, child, uncovered} <= world.studies()

    # Its certificate names what went, with the digests the index recorded at ingest.
    (certificate_id,) = done["certificates"]  # type: ignore[misc]
    code, output = world.cli("retention", "certificates", "show", str(certificate_id))
    assert code == 0, output
    shown = json.loads(output)
    body = shown["certificate"]
    assert body["target"] == {"study_uid": due}
    assert {i["sop_instance_uid"]: i["sha256"] for i in body["instances"]} == digests
    assert body["counts"]["instances"] == 2 and body["counts"]["bytes"] > 0
    assert body["cause"]["kind"] == "retention" and body["cause"]["rule"] == "ct-10y"
    assert "RET-1" not in output and "Doe" not in output  # UIDs only
    assert "patient_id" not in shown
    # Its audit record (DICOM Study Deleted, by the retention principal) names its digest.
    (record,) = world.sql("SELECT record FROM audit_log WHERE seq = ?", shown["audit_seq"])
    assert f"sha256:{shown['sha256']}" in str(record) and "retention:default" in str(record)
    code, output = world.cli("retention", "certificates", "verify", str(certificate_id))
    assert code == 0, output


def test_a_held_study_survives_delete_retention_and_shred_until_released(world: World) -> None:
    held = world.store("CT", "RET-HOLD", "20000101")  # long due
    code, output = world.cli("studies", "hold", held, "--reason", "litigation 42", "--json")
    assert code == 0, output
    hold_id = json.loads(output)["id"]

    # DELETE: 409 naming the hold, nothing of the patient or the hold's reason.
    answer = world.client.delete(f"/dicom-web/studies/{held}", headers=AUTH)
    assert answer.status_code == 409, answer.text
    assert f"legal hold {hold_id}" in answer.text
    assert "RET-HOLD" not in answer.text and "litigation" not in answer.text
    # Retention skips it and says so.
    done = world.run()
    assert done["erased"] == 0 and done["held"] == 1
    assert [h["study_uid"] for h in done["held_studies"]] == [held]  # type: ignore[union-attr]
    assert held in world.studies()
    # Shredding the patient's keys is refused while a study of theirs is held.
    code, output = world.cli("keys", "shred-patient", "RET-HOLD", "--yes")
    assert code == 1 and f"legal hold {hold_id}" in output, output

    code, output = world.cli("studies", "release", str(hold_id), "--reason", "case closed")
    assert code == 0 and "released" in output, output
    assert world.run()["erased"] == 1
    assert held not in world.studies()

    # Placed, refused and released: each in the audit trail.
    records = [str(r) for (r,) in world.sql("SELECT record FROM audit_log")]
    assert any(f"legal hold {hold_id} on study {held} placed" in r for r in records)
    assert any(f"legal hold {hold_id} on study {held} released" in r for r in records)
    assert any("crypto-shred of a patient's keys refused" in r for r in records)


def test_a_patient_hold_covers_every_study_of_theirs(world: World) -> None:
    first = world.store("CT", "RET-PAT", "20000101")
    second = world.store("MR", "RET-PAT", "20000101")
    answer = world.client.post(
        "/legal-holds", json={"patient": "RET-PAT", "reason": "records request"}, headers=AUTH
    )
    assert answer.status_code == 201, answer.text
    hold_id = answer.json()["id"]
    for uid in (first, second):
        refused = world.client.delete(f"/dicom-web/studies/{uid}", headers=AUTH)
        assert refused.status_code == 409 and f"legal hold {hold_id}" in refused.text
    listed = world.client.get("/legal-holds", headers=AUTH).json()["legal_holds"]
    assert [h["id"] for h in listed if h["patient_id"] == "RET-PAT"] == [hold_id]
    released = world.client.post(
        f"/legal-holds/{hold_id}/release", json={"reason": "answered"}, headers=AUTH
    )
    assert released.status_code == 200 and released.json()["released_at"] is not None
    again = world.client.post(
        f"/legal-holds/{hold_id}/release", json={"reason": "twice"}, headers=AUTH
    )
    assert again.status_code == 409
    # A tenant's hold covers every study of the tenant (recorded as a Security Alert).
    tenant_hold = world.client.post(
        "/legal-holds", json={"tenant": True, "reason": "regulator"}, headers=AUTH
    ).json()["id"]
    refused = world.client.delete(f"/dicom-web/studies/{first}", headers=AUTH)
    assert refused.status_code == 409 and "(on the tenant)" in refused.text
    world.client.post(f"/legal-holds/{tenant_hold}/release", json={"reason": "done"}, headers=AUTH)
    # An admin's DELETE is certified too, with the actor as its cause.
    assert world.client.delete(f"/dicom-web/studies/{first}", headers=AUTH).status_code == 204
    (certificate,) = world.archive.retention.certificates(_admin(world), first)
    assert certificate.body["cause"]["kind"] == "delete"


def test_tampering_breaks_verification(world: World) -> None:
    uid = world.store("CT", "RET-TAMPER", "20240101")
    assert world.client.delete(f"/dicom-web/studies/{uid}", headers=AUTH).status_code == 204
    (certificate,) = world.archive.retention.certificates(_admin(world), uid)
    assert [c.ok for c in world.archive.retention.verify(_admin(world), certificate.id)] == [True]

    original = certificate.text
    forged = original.replace('"instances":2', '"instances":1')
    assert forged != original
    world.sql("UPDATE erasure_certificates SET body = ? WHERE id = ?", forged, certificate.id)
    (check,) = world.archive.retention.verify(_admin(world), certificate.id)
    assert not check.ok and "altered" in check.problems[0]
    code, output = world.cli("retention", "certificates", "verify", str(certificate.id))
    assert code == 1 and "altered" in output
    code, output = world.cli("audit", "verify")
    assert code == 1 and f"ERASURE CERTIFICATE {certificate.id}" in output, output
    # The audit-verify job (the admin pages' report) says so too.
    runner = world.archive.new_job_runner(scheduled=False)
    job_id = world.archive.jobs.enqueue("audit-verify", created_by="test")
    assert job_id is not None and runner.run_job(job_id, runner.handlers["audit-verify"])
    job = world.archive.jobs.get(job_id)
    assert job is not None and job.result is not None
    assert job.result["ok"] is False and job.result["certificates_failed"] == [certificate.id]

    # A consistent digest without the key's signature is caught by the signature.
    digest = hashlib.sha256(forged.encode()).hexdigest()
    world.sql("UPDATE erasure_certificates SET digest = ? WHERE id = ?", digest, certificate.id)
    (check,) = world.archive.retention.verify(_admin(world), certificate.id)
    assert "the signature does not verify" in check.problems
    assert any("does not name this certificate" in p for p in check.problems)
    world.sql(
        "UPDATE erasure_certificates SET body = ?, digest = ? WHERE id = ?",
        original,
        certificate.digest,
        certificate.id,
    )
    code, output = world.cli("audit", "verify")
    assert code == 0 and "audit trail intact" in output, output


def _admin(world: World) -> Principal:
    return system_principal("test")


def test_identified_view_is_audited(world: World) -> None:
    uid = world.store("CT", "RET-IDENT", "20240101")
    assert world.client.delete(f"/dicom-web/studies/{uid}", headers=AUTH).status_code == 204
    (certificate,) = world.archive.retention.certificates(_admin(world), uid)
    code, output = world.cli(
        "retention", "certificates", "show", str(certificate.id), "--identified"
    )
    assert code == 0 and json.loads(output)["patient_id"] == "RET-IDENT"
    records = [str(r) for (r,) in world.sql("SELECT record FROM audit_log")]
    assert any(f"erasure certificate {certificate.id} read, identified" in r for r in records)


def test_erasure_reaches_the_replica_through_the_outbox(tmp_path: Path) -> None:
    """Retention deletes by DELETE's path, so the replica gets the same outbox entry, in the
    erasure's own transaction; a held study gets none (docs/replication.md)."""
    (tmp_path / "retention.toml").write_text(RULES)
    archive = in_process_archive(
        tmp_path,
        ADMIN,
        replicate_to="http://127.0.0.1:9/dicom-web",
        jobs="false",
        on_conflict="overwrite",
    )
    with TestClient(create_app(archive)) as client:
        world = World(client, archive, tmp_path)
        gone = world.store("CT", "RET-REPL-1", "20000101")
        held = world.store("CT", "RET-REPL-2", "20000101")
        archive.legal_holds.place(_admin(world), HoldTarget(study_uid=held), "audit of 2000")
        # Overwriting a held object (on_conflict = overwrite) would discard it too: 409.
        (sop,) = world.sql(
            "SELECT i.sop_instance_uid FROM instances i JOIN series s ON i.series_pk = s.id "
            "JOIN studies t ON s.study_pk = t.id WHERE t.study_uid = ? LIMIT 1",
            held,
        )[0]
        other = next(synth.series_datasets("CT", n_instances=1, rows=8, columns=8, seed=1))
        other.StudyInstanceUID, other.SOPInstanceUID = held, sop
        other.PatientID = "RET-REPL-2"
        replaced = client.post(
            "/dicom-web/studies",
            content=b"--b\r\nContent-Type: application/dicom\r\n\r\n"
            + synth.dataset_bytes(other)
            + b"\r\n--b--\r\n",
            headers={**AUTH, "Content-Type": DICOM_TYPE},
        )
        # PS3.18 10.5.3: the failed instance's Failure Reason in the body; the reason in Warning.
        assert replaced.status_code == 409, replaced.text
        assert "under legal hold" in replaced.headers["warning"]
        runner = JobRunner(archive.jobs, {"retention": archive.retention.run}, lease_seconds=60)
        # Asked to delete without an approval (retention_approval = review): fails, deletes nothing.
        unapproved = archive.jobs.enqueue("retention", {"dry_run": False, "today": TODAY})
        assert unapproved is not None and runner.run_job(unapproved, archive.retention.run)
        failed = archive.jobs.get(unapproved)
        assert failed is not None and "needs an admin's approval" in (failed.last_error or "")
        assert {gone, held} <= world.studies()
        job_id = archive.jobs.enqueue(
            "retention",
            {"dry_run": False, "approve": True, "today": TODAY},
            created_by="test-admin",
        )
        assert job_id is not None
        assert runner.run_job(job_id, archive.retention.run)
        job = archive.jobs.get(job_id)
        assert job is not None and job.result is not None
        assert job.result["erased"] == 1 and job.result["held"] == 1
        assert job.result["approved_by"] == "test-admin"
    deletes = world.sql("SELECT study_uid FROM replication_outbox WHERE op = 'delete'")
    assert deletes == [(gone,)]


def test_a_shred_is_certified(world: World) -> None:
    uid = world.store("CT", "RET-SHRED", "20240101")
    code, output = world.cli("keys", "shred-patient", "RET-SHRED", "--yes")
    assert code == 0, output
    certificate_id = int(output.split("erasure certificate ")[1].split()[0])
    code, output = world.cli("retention", "certificates", "show", str(certificate_id))
    assert code == 0, output
    body = json.loads(output)["certificate"]
    assert body["cause"]["kind"] == "crypto-shred" and body["target"]["studies"] == uid
    assert body["counts"]["instances"] == 2 and "RET-SHRED" not in output
    code, output = world.cli("retention", "certificates", "verify", str(certificate_id))
    assert code == 0, output
