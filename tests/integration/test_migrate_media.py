"""``nubis migrate`` from media: a folder with a DICOMDIR (made by dcmtk's dcmmkdir) and a zip.

What is checked, end to end through the CLI: every object is stored through the store service
as the migration's principal; the report reconciles source and archive per study with SHA-256
(the source gives the bytes); a file the DICOMDIR references but the medium lacks is listed
missing with its reason (zero silent gaps); a second run moves nothing (idempotent); the audit
trail holds one DICOM Instances Transferred record per study moved (PS3.15 A.5.3.4).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from integration.migrate_helpers import (
    audit_records,
    job_progress,
    migrate,
    nubis,
    report,
    start_migration,
)
from nubis.tools import synth

N_STUDIES = 4
PER_STUDY = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return synth.make_corpus(
        tmp_path_factory.mktemp("media-corpus"),
        n_studies=N_STUDIES,
        instances_per_series=PER_STUDY,
        rows=16,
        columns=16,
        seed=1201,
    )


def _cd_image(corpus: list[Path], root: Path) -> Path:
    """A CD export: files with ISO 9660 names under DICOM/ and a DICOMDIR made by dcmmkdir."""
    (root / "DICOM").mkdir(parents=True)
    for i, path in enumerate(corpus):
        shutil.copy(path, root / "DICOM" / f"IM{i:06d}")
    subprocess.run(["dcmmkdir", "--recurse", "DICOM"], cwd=root, check=True, capture_output=True)
    assert (root / "DICOMDIR").is_file()
    return root


def test_dicomdir_medium_is_migrated_and_reconciled(corpus: list[Path], tmp_path: Path) -> None:
    medium = _cd_image(corpus, tmp_path / "cd")
    data = tmp_path / "data"

    result = migrate(data, str(medium), "--name", "cd1")

    assert result["studies"] == N_STUDIES
    assert result["instances_stored"] == N_STUDIES * PER_STUDY
    rep = report(data, "cd1")
    totals = rep["totals"]
    assert totals["source_instances"] == totals["nubis_instances"] == N_STUDIES * PER_STUDY
    assert totals["sha256_matched"] == N_STUDIES * PER_STUDY
    assert totals["missing"] == totals["extra"] == totals["silent_gaps"] == 0
    # One record per study moved, besides the store's own record of each object.
    summaries = [
        r for r in audit_records(data, "migrate:cd1")
        if r["event_id"]["code"] == "110104" and "migration cd1" in r.get("outcome_description", "")
    ]  # fmt: skip
    assert len(summaries) == N_STUDIES
    assert all(r["action"] == "C" for r in summaries)

    again = migrate(data, str(medium), "--name", "cd1")
    assert again["instances_stored"] == 0
    assert again["instances_present"] == N_STUDIES * PER_STUDY
    assert again["bytes_moved"] == 0


def test_file_missing_from_the_medium_is_reported_with_its_reason(
    corpus: list[Path], tmp_path: Path
) -> None:
    medium = _cd_image(corpus, tmp_path / "cd")
    (medium / "DICOM" / "IM000001").unlink()  # referenced by the DICOMDIR, gone from the disc
    data = tmp_path / "data"

    result = migrate(data, str(medium), "--name", "cd2")

    assert result["instances_stored"] == N_STUDIES * PER_STUDY - 1
    assert result["instances_missing"] == 1
    rep = report(data, "cd2", expect_gaps=True)
    assert rep["totals"]["missing"] == 1
    assert rep["totals"]["silent_gaps"] == 0
    (missing,) = [m for s in rep["studies"] for m in s["missing"]]
    assert missing["reason"]


def test_zip_with_other_files_is_migrated(corpus: list[Path], tmp_path: Path) -> None:
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, path in enumerate(corpus):
            z.write(path, f"export/{i // PER_STUDY}/{path.name}")
        z.writestr("export/README.TXT", "exported from the old PACS\n")
    data = tmp_path / "data"

    result = migrate(data, str(archive), "--name", "zip1")

    assert result["instances_stored"] == N_STUDIES * PER_STUDY
    assert result["non_dicom_files"] == 1
    totals = report(data, "zip1")["totals"]
    assert totals["nubis_instances"] == N_STUDIES * PER_STUDY
    assert totals["sha256_matched"] == N_STUDIES * PER_STUDY


def test_since_last_run_moves_only_what_changed(corpus: list[Path], tmp_path: Path) -> None:
    """Delta mode: a source still receiving (a new study, a new instance in a known study)
    is kept in step; studies whose instance count is unchanged are not listed again."""
    folder = tmp_path / "pacs"
    for path in corpus:
        shutil.copytree(path.parent, folder / path.parent.name, dirs_exist_ok=True)
    data = tmp_path / "data"
    migrate(data, str(folder), "--name", "delta")
    known = pydicom.dcmread(corpus[0], stop_before_pixels=True)
    patient = synth.PatientSpec(
        str(known.PatientID), str(known.PatientName), known.PatientBirthDate, known.PatientSex
    )
    synth.make_ct_series(
        folder / "late", n_instances=1, study_uid=known.StudyInstanceUID, patient=patient,
        seed=77, series_number=9, rows=16, columns=16,
    )  # fmt: skip
    synth.make_corpus(
        folder / "new", n_studies=1, instances_per_series=2, rows=16, columns=16, seed=1299
    )

    result = migrate(data, str(folder), "--name", "delta", "--since-last-run")

    assert result["studies"] == N_STUDIES + 1
    assert result["studies_skipped"] == N_STUDIES - 1
    assert result["instances_stored"] == 1 + 2
    assert result["instances_present"] == PER_STUDY
    totals = report(data, "delta")["totals"]
    assert totals["source_instances"] == totals["nubis_instances"] == N_STUDIES * PER_STUDY + 3


def test_max_mb_per_s_holds_the_rate(tmp_path: Path) -> None:
    paths = synth.make_corpus(
        tmp_path / "src", n_studies=2, instances_per_series=3, rows=64, columns=64, seed=1203
    )
    # About 60 kB: 3 s at the rate, 2 s once the first second's allowance went at once; an
    # unthrottled run takes a fraction of a second.
    size = sum(p.stat().st_size for p in paths)
    data = tmp_path / "data"

    result = migrate(data, str(tmp_path / "src"), "--name", "slow", "--max-mb-per-s", "0.02")

    assert result["bytes_moved"] == size
    # One second of allowance may go at once; the rest at 20 kB/s.
    assert result["seconds"] >= size / 20_000 - 1.2


def test_refused_object_is_listed_with_its_reason_and_digest(
    corpus: list[Path], tmp_path: Path
) -> None:
    """The archive already holds a different object under one of the source's SOP Instance
    UIDs: the store refuses the source's (0x0111, on_conflict=refuse), and the report lists it
    as refused with that reason and with a SHA-256 that differs from the archive's, and exits 1."""
    data = tmp_path / "data"
    other = pydicom.dcmread(corpus[0])
    other.SeriesDescription = "a different object under the same UID"
    (tmp_path / "other").mkdir()
    other.save_as(tmp_path / "other" / "other.dcm", enforce_file_format=True)
    done = nubis(data, "import", str(tmp_path / "other"))
    assert done.returncode == 0, done.stdout + done.stderr
    folder = tmp_path / "export"
    for path in corpus:
        shutil.copytree(path.parent, folder / path.parent.name, dirs_exist_ok=True)

    result = migrate(data, str(folder), "--name", "clash")

    assert result["instances_refused"] == 1
    rep = report(data, "clash", expect_gaps=True)
    assert rep["totals"]["refused"] == 1 and rep["totals"]["missing"] == 0  # held, but not it
    (refused,) = [r for s in rep["studies"] for r in s["refused"]]
    assert refused["sop_instance_uid"] == str(other.SOPInstanceUID)
    assert refused["status"] == 0x0111 and "already stored" in refused["reason"]
    assert rep["totals"]["sha256_differs"] == 1
    assert rep["totals"]["silent_gaps"] == 0


def test_tar_gz_is_migrated(corpus: list[Path], tmp_path: Path) -> None:
    archive = tmp_path / "export.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i, path in enumerate(corpus):
            tar.add(path, f"export/{i}.dcm")
    data = tmp_path / "data"

    result = migrate(data, str(archive), "--name", "tar1")

    assert result["instances_stored"] == N_STUDIES * PER_STUDY
    assert report(data, "tar1")["totals"]["sha256_matched"] == N_STUDIES * PER_STUDY


def test_cancelled_migration_stops_and_says_so(corpus: list[Path], tmp_path: Path) -> None:
    """``nubis jobs cancel`` reaches a running migration: it stops after the studies begun,
    the job is cancelled, and the command exits 1 naming it."""
    folder = tmp_path / "pacs"
    for path in corpus:
        shutil.copytree(path.parent, folder / path.parent.name, dirs_exist_ok=True)
    data = tmp_path / "data"
    process = start_migration(data, str(folder), "--name", "cancel", "--max-mb-per-s", "0.001")
    try:
        deadline = time.monotonic() + 60
        while job_progress(data).get("total") is None or job_progress(data)["done"] < 1:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        assert nubis(data, "jobs", "cancel", "1").returncode == 0
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()
    (job,) = json.loads(nubis(data, "jobs", "list", "--json").stdout)
    assert job["state"] == "cancelled"
    assert job["progress"]["done"] < N_STUDIES * PER_STUDY


def test_second_run_of_a_live_migration_is_refused(corpus: list[Path], tmp_path: Path) -> None:
    """Run again while the first run is alive (its lease renewed): not two runs of one job."""
    folder = tmp_path / "pacs"
    for path in corpus:
        shutil.copytree(path.parent, folder / path.parent.name, dirs_exist_ok=True)
    data = tmp_path / "data"
    process = start_migration(data, str(folder), "--name", "twice", "--max-mb-per-s", "0.001")
    try:
        deadline = time.monotonic() + 60
        while job_progress(data)["done"] < 1:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)

        second = nubis(data, "migrate", "run", str(folder), "--name", "twice")

        assert second.returncode == 1
        assert "is running in" in second.stdout + second.stderr
        assert process.poll() is None  # the first run goes on
    finally:
        process.kill()
        process.wait(timeout=30)


def test_conflicting_studies_are_migrated_into_quarantine_and_reported(tmp_path: Path) -> None:
    """Issue 12: an old archive's study whose instances disagree on the patient, and a study
    reusing another's Series Instance UID, come in all the same (the migration stores with
    patient_conflict = quarantine, whatever the setting): nothing refused, no gap, each held
    in quarantine (seen by admins only, docs/security.md) and listed as such, with why, in
    the report (JSON and text; CSV in tests/unit/test_migrate_report.py) and by ``nubis
    storage quarantine``. A delta run after the source gained an instance of the held study
    moves that instance alone: the job sees what quarantine holds (StoreService.holdings, UIDs
    and digests only, audited) although its principal may not read it."""
    data = tmp_path / "data"
    folder = tmp_path / "mixed"
    folder.mkdir()
    datasets = list(synth.series_datasets("CT", n_instances=2, seed=1212, patient=synth.PatientSpec(
        "MIG-PAT-A", "Mixed^Ann", "19700101", "F")))  # fmt: skip
    datasets[0].save_as(folder / "IM0.dcm", enforce_file_format=True)
    # A typo fixed halfway, at the source (synth's data sets share their patient elements).
    datasets[1].PatientID = "MIG-PAT-B"
    datasets[1].save_as(folder / "IM1.dcm", enforce_file_format=True)
    # Two studies of one patient whose series share a UID (a source that reused it).
    reused = [
        next(synth.series_datasets("MR", n_instances=1, seed=seed, patient=synth.PatientSpec(
            "MIG-PAT-C", "Reused^Cy", "19700101", "M")))
        for seed in (1213, 1214)
    ]  # fmt: skip
    reused[1].SeriesInstanceUID = reused[0].SeriesInstanceUID
    for n, ds in enumerate(reused):
        ds.save_as(folder / f"IM{n + 2}.dcm", enforce_file_format=True)
    mixed, pair = str(datasets[0].StudyInstanceUID), {str(d.StudyInstanceUID) for d in reused}

    result = migrate(data, str(folder), "--name", "mixed")

    assert result["instances_refused"] == 0
    rep = report(data, "mixed")
    totals = rep["totals"]
    assert (totals["silent_gaps"], totals["refused"], totals["missing"]) == (0, 0, 0)
    assert totals["studies_quarantined"] == 2
    rows = {r["study_uid"]: r for r in rep["studies"]}
    assert rows[mixed]["quarantined"] and rows[mixed]["quarantine_reasons"] == [
        "patient-conflict"
    ]
    # Whichever of the pair came second is held, under its own study; the first is not.
    [second] = [uid for uid in pair if rows[uid]["quarantined"]]
    assert rows[second]["quarantine_reasons"] == ["series-conflict"]
    assert rows[second]["nubis_count"] == rows[second]["source_count"] == 1
    assert not rows[(pair - {second}).pop()]["quarantined"]

    text = nubis(data, "migrate", "report", "mixed").stdout
    assert "held in quarantine 2 studies" in text
    assert f"study {second}: source 1, nubis 1, held in quarantine (series-conflict)" in text
    assert "MIG-PAT" not in text  # the report shows UIDs and counts, no patient data

    listed = nubis(data, "storage", "quarantine", "--json")
    assert listed.returncode == 0, listed.stderr
    held = {h["study_uid"]: h for h in json.loads(listed.stdout)}
    assert held[mixed]["patients"] == {"MIG-PAT-A": 1, "MIG-PAT-B": 1}
    assert held[second]["reasons"] == ["series-conflict"]

    late = copy.deepcopy(datasets[0])
    late.PatientID, late.InstanceNumber = "MIG-PAT-A", 3
    late.SOPInstanceUID = late.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    late.save_as(folder / "IM9.dcm", enforce_file_format=True)

    delta = migrate(data, str(folder), "--name", "mixed", "--since-last-run")

    # The held study's two instances are present, not moved again; the pair is unchanged.
    assert (delta["instances_present"], delta["instances_stored"]) == (2, 1)
    assert delta["bytes_moved"] == (folder / "IM9.dcm").stat().st_size
    assert delta["studies_skipped"] == 2
    rows = {r["study_uid"]: r for r in report(data, "mixed")["studies"]}
    assert rows[mixed]["nubis_count"] == rows[mixed]["source_count"] == 3
    checks = [
        r for r in audit_records(data, "migrate:mixed")
        if r["event_id"]["code"] == "110103" and "presence of study" in r.get(
            "outcome_description", "")
    ]  # fmt: skip
    assert checks, "the presence check is recorded (DICOM Instances Accessed)"
