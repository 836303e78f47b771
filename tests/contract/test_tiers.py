"""Storage tiers end to end: rules, moves, reads, pins, reaper, delete, report.

Run on the folder store (tiers are folders) with SQLite and PostgreSQL, and on S3 over the
suite's real Ceph RGW (tiers are storage classes: STANDARD, STANDARD_IA, GLACIER), each under
encryption at rest as the archive runs by default. Ceph keeps GLACIER objects readable (no
restore semantics); the restore path is proved against a stub in tests/unit/test_blobs_s3.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from contract import ARCHIVE_BACKENDS, archive_overrides
from nubis.archive import Archive
from nubis.config import load_settings
from nubis.index.schema import instance_tiers, studies
from nubis.security.policy import system_principal
from nubis.services.retrieve import AS_STORED
from nubis.tiers.report import usage_by_tier
from nubis.tools.synth import dataset_bytes, series_datasets

DAY_MS = 86_400_000
RULES = "modality=MG age<730d -> hot; unread>365d -> archive; unread>30d -> cold"
WHO = system_principal()


@dataclass
class Study:
    uid: str
    files: dict[str, bytes]  # SOP Instance UID -> the file as sent


@pytest.fixture(params=ARCHIVE_BACKENDS)
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    overrides = archive_overrides(request, tmp_path, "tiers", lifecycle=RULES)
    archive = Archive(load_settings(environ={}, overrides=overrides))
    archive.index.migrate()
    archive.index.open()
    yield archive
    archive.index.close()


def _store(archive: Archive, modality: str, seed: int, n: int = 3) -> Study:
    files = {}
    study_uid = ""
    for ds in series_datasets("CT", n_instances=n, rows=32, columns=32, seed=seed):
        ds.Modality = modality
        data = dataset_bytes(ds)
        with archive.spool.writer() as writer:
            writer.write(data)
            spooled = writer.finish()
        outcome = archive.store.store(spooled, principal=WHO)
        assert outcome.ok, outcome.error
        files[ds.SOPInstanceUID] = data
        study_uid = ds.StudyInstanceUID
    return Study(study_uid, files)


def _age(archive: Archive, study: Study, days: int) -> None:
    """Make the study look stored ``days`` ago and never read since."""
    at = int(time.time() * 1000) - days * DAY_MS
    archive.index.write(
        lambda c: c.execute(
            update(studies).where(studies.c.study_uid == study.uid).values(created_at=at)
        )
    )


def _where(archive: Archive, study: Study) -> dict[str, int]:
    facts = archive.lifecycle.study_tiers("default", study.uid)
    assert facts is not None
    return {name: v["objects"] for name, v in facts["tiers"].items()}


def _in_store(archive: Archive, study: Study) -> set[str]:
    """Where the blob store itself says the study's blobs are (storage class or folder)."""
    assert archive.lifecycle.mover is not None
    found = archive.retrieve.instances(WHO, study.uid)
    return {archive.lifecycle.mover.where(inst.blob_key) for inst in found}


def _read_all(archive: Archive, study: Study) -> None:
    """Retrieve the study whole, byte for byte as stored (the WADO-RS / C-MOVE path)."""
    for inst in archive.retrieve.instances(WHO, study.uid):
        data = b"".join(archive.retrieve.instance_chunks(inst, AS_STORED))
        assert data == study.files[inst.sop_instance_uid]


def test_lifecycle_moves_studies_and_reads_stay_transparent(archive: Archive) -> None:
    ct = _store(archive, "CT", seed=1)
    mg = _store(archive, "MG", seed=2)
    old = _store(archive, "CT", seed=3)
    fresh = _store(archive, "CT", seed=4)
    _age(archive, ct, 40)
    _age(archive, mg, 400)
    _age(archive, old, 400)
    names = archive.tiers
    classes = {t.name: t.target for t in names.all}
    s3 = archive.settings.blobs.startswith("s3://")

    def expect(study: Study, tier: str) -> None:
        assert _where(archive, study) == {tier: 3}
        assert _in_store(archive, study) == {classes[tier] if s3 else tier}

    summary = archive.lifecycle.run()
    assert summary["studies"] == 4
    assert summary["moved_to_cold"] == 3 and summary["moved_to_archive"] == 3
    if not s3:  # a tier is a folder of its own, with the same fan-out
        cold = archive.settings.data_dir / "blobs" / "tiers" / "STANDARD_IA"
        assert len([p for p in cold.rglob("*") if p.is_file()]) == 3
    expect(ct, "cold")
    expect(mg, "hot")  # modality=MG age<730d -> hot comes first
    expect(old, "archive")
    expect(fresh, "hot")
    for study in (ct, mg, old, fresh):
        _read_all(archive, study)  # every tier serves the bytes as stored
    # A second pass has nothing left to do.
    assert archive.lifecycle.run() == {"studies": 4}

    # Reading a cold study makes it recently read: the next pass brings it back to hot.
    archive.reads.flush()
    summary = archive.lifecycle.run()
    assert summary["moved_to_hot"] == 6  # ct and old were read just now
    expect(ct, "hot")
    expect(old, "hot")

    # An operator pin wins over the rules, and is undone by unpinning.
    assert archive.lifecycle.pin("default", fresh.uid, "archive")
    archive.lifecycle.run()
    expect(fresh, "archive")
    _read_all(archive, fresh)
    assert archive.lifecycle.pin("default", fresh.uid, None)
    assert not archive.lifecycle.pin("default", "1.2.3.404", "hot")
    archive.lifecycle.run()
    expect(fresh, "hot")


def test_report_reaper_and_delete_with_tiered_blobs(archive: Archive) -> None:
    ct = _store(archive, "CT", seed=5)
    mg = _store(archive, "MG", seed=6, n=2)
    _age(archive, ct, 40)
    archive.lifecycle.run()
    usage = usage_by_tier(archive.index, archive.tiers)
    sizes = {name: sum(len(f) for f in s.files.values()) for name, s in (("ct", ct), ("mg", mg))}
    assert usage == {"hot": (2, sizes["mg"]), "cold": (3, sizes["ct"]), "archive": (0, 0)}

    # Tiered blobs are referenced: the reaper (grace 0) leaves every one of them.
    report = archive.maintenance.reap(grace_seconds=0)
    assert report.orphans_deleted == 0 and report.doomed_deleted == 0
    _read_all(archive, ct)
    assert len(list(archive.blobs.list())) == 5

    # Deleting a study removes its blobs from their tier and its tier rows with its rows.
    assert archive.maintenance.delete(WHO, ct.uid) == 3
    assert len(list(archive.blobs.list())) == 2
    with archive.index.reading() as conn:
        assert conn.execute(select(func.count()).select_from(instance_tiers)).scalar_one() == 0
    assert usage_by_tier(archive.index, archive.tiers)["cold"] == (0, 0)


def test_tier_job_through_the_runner(archive: Archive) -> None:
    """`nubis storage tier STUDY hot` is a pin plus a tier job for that study."""
    ct = _store(archive, "CT", seed=7)
    assert archive.job_runner is not None
    assert archive.lifecycle.pin("default", ct.uid, "cold")
    job_id = archive.jobs.enqueue("tier", {"partition": "default", "study": ct.uid})
    assert archive.job_runner.run_once()
    job = archive.jobs.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state.value == "done"
    assert job.result == {"studies": 1, "moved_to_cold": 3, "bytes_moved": sum(
        len(f) for f in ct.files.values()
    )}  # fmt: skip
    assert job.progress_done == job.progress_total == 1
    assert _where(archive, ct) == {"cold": 3}
    verify = archive.jobs.enqueue("verify")
    assert archive.job_runner.run_once()
    result = archive.jobs.get(verify).result  # type: ignore[arg-type, union-attr]
    assert result is not None and result["ok"] == 3 and result["problems"] == []
    # Moving and re-reading patient data are accesses (PS3.15 A.5.3.3, DICOM Instances
    # Accessed): one record per study, Update for the move and Read for the check.
    system = [
        e for e in (r.event_dict for r in archive.audit.scan()) if e.get("front_door") == "system"
    ]
    studies_named = [
        [o["id"] for o in e["objects"] if o["id_type"]["code"] == "110180"] for e in system
    ]
    assert [(e["event_id"]["code"], e["action"], e["outcome_description"]) for e in system] == [
        ("110103", "U", "3 object(s) moved to storage tier cold"),
        ("110103", "R", "integrity check of 3 object(s): intact"),
    ]
    assert studies_named == [[ct.uid], [ct.uid]]
