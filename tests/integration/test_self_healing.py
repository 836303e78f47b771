"""Self-healing (issue 13): the verify job puts back a missing or damaged blob from a backup
folder (``heal_from``), only bytes that pass the object's own check, and audits each repair
(DICOM Instances Accessed, action Update, PS3.15 A.5.3.3).

In-process: an encrypted folder archive, a backup taken by the ``backup`` job, then blobs
damaged on disk and the verify job run by the archive's own job runner.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nubis.archive import Archive
from nubis.backup.job import KIND as BACKUP
from nubis.backup.job import Backup
from nubis.config import load_settings
from nubis.jobs.context import JobContext
from nubis.jobs.store import JobState
from nubis.model.records import StoredInstance
from nubis.security.authn import cli_principal
from nubis.services.retrieve import AS_STORED
from nubis.tools.synth import dataset_bytes, series_datasets

UPDATE = "U"
INSTANCES_ACCESSED = "110103"


@dataclass
class Healing:
    archive: Archive
    backup: Path
    stored: dict[str, bytes]  # SOP Instance UID -> bytes as sent


@pytest.fixture
def healing(tmp_path: Path) -> Iterator[Healing]:
    """An encrypted archive of 4 objects, backed up into ``B`` (its ``heal_from``)."""
    backup = tmp_path / "B"
    settings = load_settings(
        environ={},
        overrides={"data_dir": str(tmp_path / "data"), "durable": "false",
                   "heal_from": str(backup), "jobs_schedule": ""},
    )  # fmt: skip
    with Archive(settings) as archive:
        assert archive.keys is not None  # encrypted at rest (the default)
        stored = {}
        for ds in series_datasets("CT", n_instances=4, rows=64, columns=64, seed=51):
            source = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            source.write_bytes(dataset_bytes(ds))
            stored[str(ds.SOPInstanceUID)] = source.read_bytes()
            outcome = archive.store.store(
                archive.spool.from_file(source), principal=cli_principal()
            )
            assert outcome.ok, outcome.error
        job_id = archive.jobs.enqueue(BACKUP, {"to": str(backup)})
        assert job_id is not None
        job = archive.jobs.get(job_id)
        assert job is not None
        runner = Backup(
            archive.index, archive.blobs, archive.keys, "file", archive.guard, cli_principal()
        )
        result = runner.run(JobContext(job, threading.Event()))
        assert result["copied"] == 4 and result["absent"] == {}
        yield Healing(archive, backup, stored)


def _instances(archive: Archive) -> list[StoredInstance]:
    from sqlalchemy import select

    from nubis.index.schema import studies

    with archive.index.reading() as conn:
        (study,) = conn.scalars(select(studies.c.study_uid)).all()
    return sorted(archive.retrieve.instances(cli_principal(), study), key=lambda i: i.blob_key)


def _blob(archive: Archive, key: str) -> Path:
    return archive.settings.data_dir / "blobs" / key[:2] / key[2:4] / key


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x01
    path.write_bytes(bytes(data))


def _verify(archive: Archive, **params: object) -> dict[str, object]:
    job_id = archive.jobs.enqueue("verify", dict(params))
    assert job_id is not None
    assert archive.new_job_runner(scheduled=False).run_once()
    job = archive.jobs.get(job_id)
    assert job is not None and job.state is JobState.DONE, job and job.last_error
    assert job.result is not None
    return job.result


def _repairs(archive: Archive) -> list[tuple[str, str]]:
    """(outcome, description) of every self-healing audit record."""
    found = []
    for record in archive.audit.scan(limit=100000):
        event = record.event_dict
        description = event.get("outcome_description") or ""
        if "self-healing" in description:
            assert event["event_id"]["code"] == INSTANCES_ACCESSED
            assert event["action"] == UPDATE
            found.append((str(event["outcome"]), description))
    return found


def test_verify_heals_a_damaged_and_a_missing_blob_from_a_backup(healing: Healing) -> None:
    archive = healing.archive
    damaged, missing, *_ = _instances(archive)
    _flip(_blob(archive, damaged.blob_key))  # inside the ciphertext: an AES-GCM tag fails
    _blob(archive, missing.blob_key).unlink()

    result = _verify(archive)
    assert (result["unreadable"], result["missing"]) == (1, 1)
    assert (result["repaired"], result.get("not_repairable", 0)) == (2, 0)
    problems = {p["instance"]: p for p in result["problems"]}  # type: ignore[attr-defined]
    for inst in (damaged, missing):
        assert problems[inst.sop_instance_uid]["repair"] == f"repaired from backup {healing.backup}"

    for inst in _instances(archive):  # byte-exact through the services' checked reads
        data = b"".join(archive.retrieve.instance_chunks(inst, AS_STORED))
        assert data == healing.stored[inst.sop_instance_uid]
    repairs = _repairs(archive)
    assert len(repairs) == 2 and all(outcome == "0" for outcome, _ in repairs)
    assert {d.split()[3] for _, d in repairs} == {
        damaged.sop_instance_uid,
        missing.sop_instance_uid,
    }
    again = _verify(archive)
    assert again["checked"] == again["ok"] == 4 and "repaired" not in again
    assert archive.audit.verify(used_by="test").ok
    listed = _jobs_list(archive)
    assert "2 damaged: 2 repaired, 0 not repairable" in listed and "4 intact" in listed


def _jobs_list(archive: Archive) -> str:
    """``nubis jobs list`` of the archive's data folder."""
    from typer.testing import CliRunner

    from nubis.cli.main import app

    args = ["jobs", "list", "--data-dir", str(archive.settings.data_dir), "--set", "durable=false"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_a_blob_the_backup_lacks_is_not_repairable(healing: Healing, tmp_path: Path) -> None:
    archive = healing.archive
    ds = next(series_datasets("CT", n_instances=1, rows=64, columns=64, seed=52))
    source = tmp_path / "late.dcm"
    source.write_bytes(dataset_bytes(ds))
    assert archive.store.store(archive.spool.from_file(source), principal=cli_principal()).ok
    late = next(
        i for s in _all_studies(archive) for i in s if i.sop_instance_uid == ds.SOPInstanceUID
    )
    _blob(archive, late.blob_key).unlink()

    result = _verify(archive)
    assert result["missing"] == 1 and result["not_repairable"] == 1 and "repaired" not in result
    (problem,) = result["problems"]  # type: ignore[misc]
    assert problem["repair"] == f"not repairable: backup {healing.backup}: holds no copy"
    ((outcome, description),) = _repairs(archive)
    assert outcome == "4" and "not repairable" in description


def test_a_damaged_backup_copy_is_refused(healing: Healing) -> None:
    """Neither a copy that differs from its manifest nor one that matches a forged manifest
    but fails the object's check (AES-GCM against the index's SHA-256) replaces anything."""
    archive = healing.archive
    first, second, *_ = _instances(archive)
    folder = healing.backup
    for inst in (first, second):
        _blob(archive, inst.blob_key).unlink()
    _flip(folder / "blobs" / first.blob_key[:2] / first.blob_key[2:4] / first.blob_key)
    # The second copy: damaged, and its manifest entries rewritten to match the damage.
    copy = folder / "blobs" / second.blob_key[:2] / second.blob_key[2:4] / second.blob_key
    _flip(copy)
    _forge_manifests(folder, second.blob_key, copy)

    result = _verify(archive)
    assert result["missing"] == 2 and result["not_repairable"] == 2
    why = {p["instance"]: p["repair"] for p in result["problems"]}  # type: ignore[attr-defined]
    assert why[first.sop_instance_uid].endswith(
        "its copy differs from the digest it recorded (damaged)"
    )
    assert "its copy fails the object's check" in why[second.sop_instance_uid]
    for inst in (first, second):
        assert not _blob(archive, inst.blob_key).exists()  # nothing bad put in place


def _forge_manifests(folder: Path, key: str, copy: Path) -> None:
    import hashlib
    import json

    digest = hashlib.sha256(copy.read_bytes()).hexdigest()
    for path in (folder / "manifests").glob("*.json"):
        data = json.loads(path.read_text())
        data["blobs"][key] = [copy.stat().st_size, digest]
        path.write_text(json.dumps(data))


def _all_studies(archive: Archive) -> list[list[StoredInstance]]:
    from sqlalchemy import select

    from nubis.index.schema import studies

    with archive.index.reading() as conn:
        uids = conn.scalars(select(studies.c.study_uid)).all()
    return [archive.retrieve.instances(cli_principal(), uid) for uid in uids]
