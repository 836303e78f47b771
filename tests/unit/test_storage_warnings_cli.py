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
        run("import", str(folder))

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
