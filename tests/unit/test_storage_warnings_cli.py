"""``nubis storage warnings``: objects ingested with warnings, per reason (issue 12)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from nubis.cli.main import app


def test_storage_warnings_lists_what_was_odd_per_reason(tmp_path: Path) -> None:
    """Imported: two objects whose file meta names another instance (pydicom's rtplan.dcm,
    rtdose.dcm), a clean MR and the same MR again in RLE; the report counts per reason and,
    with --list, names each instance, in JSON and as plain text."""
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false"]

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, *data], env={"COLUMNS": "200"})
        assert result.exit_code == code, result.output
        return result.output

    (tmp_path / "data").mkdir()
    assert "no object was ingested with warnings" in run("storage", "warnings")
    for batch, names in (
        ("first", ["rtplan.dcm", "rtdose.dcm", "MR_small.dcm"]),
        ("again", ["MR_small_RLE.dcm"]),
    ):
        folder = tmp_path / batch
        folder.mkdir()
        for name in names:
            shutil.copy(get_testdata_file(name), folder / name)
        imported = run("import", str(folder))
    assert "1 stored (1 with warnings: nubis storage warnings), 0 refused" in imported

    report = json.loads(run("storage", "warnings", "--json"))
    assert report == {
        "reasons": [
            {"reason": "file-meta-mismatch", "status": "0xB007", "instances": 2, "studies": 2},
            {"reason": "same-instance-other-encoding", "status": "0xB000", "instances": 1,
             "studies": 1},
        ]
    }  # fmt: skip
    listed = json.loads(run("storage", "warnings", "--json", "--list", "--reason",
                            "file-meta-mismatch"))["instances"]  # fmt: skip
    expected = {
        pydicom.dcmread(get_testdata_file(n), stop_before_pixels=True).SOPInstanceUID
        for n in ("rtplan.dcm", "rtdose.dcm")
    }
    assert {item["sop_instance_uid"] for item in listed} == expected
    assert all("(0002,0003)" in item["detail"] for item in listed)
    plain = run("storage", "warnings", "--list")
    assert "file-meta-mismatch" in plain and "same-instance-other-encoding" in plain
    mr = pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True)
    assert mr.SOPInstanceUID in plain


def test_storage_quarantine_and_release(tmp_path: Path) -> None:
    """Imported with patient_conflict = quarantine: a study of two patients is listed by
    ``nubis storage quarantine`` with the instances per Patient ID, refused a plain release
    while they disagree, released as resolved, and then listed no more."""
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false",
            "--set", "patient_conflict=quarantine"]  # fmt: skip

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, [*args, *data], env={"COLUMNS": "200"})
        assert result.exit_code == code, result.output
        return result.output

    folder = tmp_path / "two-patients"
    folder.mkdir()
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.save_as(folder / "a.dcm")
    ct.PatientID = "OTHER-PATIENT"
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.8"
    ct.save_as(folder / "b.dcm")
    run("import", str(folder))

    [held] = json.loads(run("storage", "quarantine", "--json"))
    assert held["study_uid"] == ct.StudyInstanceUID and held["instances"] == 2
    assert held["patients"] == {pydicom.dcmread(folder / "a.dcm").PatientID: 1, "OTHER-PATIENT": 1}
    assert ct.StudyInstanceUID in run("storage", "quarantine")
    refused = run("storage", "release", ct.StudyInstanceUID, "--reason", "x", code=1)
    assert "still holds 2 Patient IDs" in refused
    released = run("storage", "release", ct.StudyInstanceUID, "--reason", "merged", "--resolved")
    assert "released from quarantine" in released
    assert "no study is held in quarantine" in run("storage", "quarantine")
    assert "patient-conflict" in run("storage", "warnings")
