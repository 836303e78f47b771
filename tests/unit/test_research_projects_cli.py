"""``nubis research``: a project made, shown, exported and re-identified from the command line
(issue 14, docs/research.md); each step through the services, so authorized and audited."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pyarrow.parquet
import pydicom
from typer.testing import CliRunner

from nubis.cli.main import app
from nubis.tools import synth


def test_project_export_and_reidentify(tmp_path: Path) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(tmp_path / "data"), "--set", "durable=false"]
    folder = tmp_path / "ct"
    patient = synth.PatientSpec("PAT-CLI-1234", "Cli^Carla", "19800101", "F")
    files = synth.make_ct_series(
        folder, n_instances=2, rows=16, columns=16, seed=7, patient=patient
    )
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert runner.invoke(app, ["import", str(folder), *data]).exit_code == 0
    made = runner.invoke(
        app, ["users", "add", "carol", "--role", "researcher", "--no-password", *data]
    )
    assert made.exit_code == 0, made.output

    created = runner.invoke(
        app, ["research", "project", "create", "trial", "--study", study, *data]
    )
    assert created.exit_code == 0 and "1 studies" in created.output, created.output
    added = runner.invoke(app, ["research", "project", "add-member", "trial", "carol", *data])
    assert added.exit_code == 0, added.output
    shown = runner.invoke(app, ["research", "project", "show", "trial", *data])
    assert shown.exit_code == 0 and json.loads(shown.output)["members"] == ["carol"]
    listed = runner.invoke(app, ["research", "project", "list", *data], env={"COLUMNS": "200"})
    assert "trial" in listed.output and "carol" in listed.output

    target = tmp_path / "trial.zip"
    exported = runner.invoke(app, ["research", "export", "trial", "--zip", str(target), *data])
    assert exported.exit_code == 0, exported.output
    with zipfile.ZipFile(target) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["instances"] == 2
    (pseudonym,) = manifest["pseudonyms"]
    # The project's Parquet tables name the patient by the export's pseudonym (one key).
    tables = tmp_path / "tables"
    parquet = runner.invoke(
        app, ["export", "metadata", "--to", str(tables), "--project", "trial", *data]
    )
    assert parquet.exit_code == 0, parquet.output
    studies = pyarrow.parquet.read_table(tables / "studies.parquet").to_pylist()
    assert [row["patient_id"] for row in studies] == [pseudonym]
    assert [row["study_uid"] for row in studies] == list(manifest["pseudonyms"][pseudonym])
    found = runner.invoke(app, ["research", "reidentify", "trial", pseudonym, *data])
    assert found.exit_code == 0 and json.loads(found.output)["patient_id"] == "PAT-CLI-1234"
    with_secret = runner.invoke(
        app,
        ["research", "export", "trial", "--to-dicomweb", "https://u:pw@h/dicom-web",
         "--manifest", str(tmp_path / "m"), *data],
    )  # fmt: skip
    assert with_secret.exit_code == 2 and "NUBIS_RESEARCH_EXPORT_API_KEY" in with_secret.output
