"""``nubis keys retire``: an old KEK goes only once nothing needs it; audited before and after.

Over the local keyring and the index keyring (with its KEK secret handled as an operator does:
``new-secret``, ``rotate --out``, ``retire --out``, each new secret put in place of the old).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from nubis.archive import Archive
from nubis.cli.main import app
from nubis.config import load_settings
from nubis.crypto.index_keys import KekSecret
from nubis.model.audit import EventID, EventOutcome, EventType
from nubis.security.authn import cli_principal
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets

OLD = PatientSpec("RETIRE-OLD", "Old^Olga", "19600101", "F")
BOTH = PatientSpec("RETIRE-BOTH", "Both^Bert", "19600101", "M")
NEW = PatientSpec("RETIRE-NEW", "New^Nina", "19600101", "F")


def run(args: list[str]) -> Result:
    return CliRunner().invoke(app, args)


class Data:
    """An archive on disk, its keyring of the kind asked for, and what was stored when."""

    def __init__(self, root: Path, kind: str) -> None:
        self.root = root
        self.kind = kind
        self.dir = root / "data"
        self.overrides = {"data_dir": str(self.dir), "durable": "false"}
        self.args = ["--data-dir", str(self.dir), "--set", "durable=false"]
        self.secret = root / "secrets" / "nubis-keks"
        if kind == "index":
            self.secret.parent.mkdir()
            assert run(["keys", "new-secret", "--out", str(self.secret)]).exit_code == 0
            keyring = "index+" + self.secret.as_uri()
            self.overrides["keyring"] = keyring
            self.args += ["--set", f"keyring={keyring}"]
        self.studies: dict[str, list[str]] = {}
        self.seed = 0

    def store(self, *patients: PatientSpec) -> list[str]:
        """Import one CT series per patient; their Study Instance UIDs."""
        files = self.root / f"in{self.seed}"
        files.mkdir()
        uids = []
        for patient in patients:
            self.seed += 1
            for ds in series_datasets("CT", n_instances=2, patient=patient, seed=90 + self.seed):
                (files / f"{ds.SOPInstanceUID}.dcm").write_bytes(dataset_bytes(ds))
            uids.append(str(ds.StudyInstanceUID))
        assert run(["import", str(files), *self.args]).exit_code == 0
        return uids

    def keys(self, *args: str) -> Result:
        return run(["keys", *args, *self.args])

    def rotate(self) -> None:
        if self.kind == "local":
            assert self.keys("rotate").exit_code == 0
            return
        staged = self.secret.with_name("staged")
        result = self.keys("rotate", "--out", str(staged))
        assert result.exit_code == 0, result.output
        staged.replace(self.secret)  # what giving every node the new secret amounts to here

    def retire(self, kek_id: str, *options: str) -> Result:
        if self.kind == "local":
            return self.keys("retire", kek_id, *options)
        staged = self.secret.with_name("staged")
        result = self.keys("retire", kek_id, *options, "--out", str(staged))
        if staged.exists():
            assert result.exit_code == 0, result.output
            staged.replace(self.secret)
        return result

    @contextmanager
    def archive(self) -> Iterator[Archive]:
        archive = Archive(load_settings(environ={}, overrides=self.overrides))
        archive.index.open()
        archive.audit.open()
        try:
            yield archive
        finally:
            archive.audit.close()
            archive.index.close()

    def readable(self, studies: list[str]) -> bool:
        with self.archive() as archive:
            for study in studies:
                for inst in archive.retrieve.instances(cli_principal(), study):
                    archive.retrieve.read(inst, 0, 132)
        return True

    def delete(self, studies: list[str]) -> None:
        with self.archive() as archive:
            for study in studies:
                archive.maintenance.delete(cli_principal(), study)

    def retire_records(self) -> list[tuple[EventOutcome, str]]:
        with self.archive() as archive:
            events = [r.event for r in archive.audit.scan(0, 10_000)]
        return [
            (e.outcome, e.outcome_description or "")
            for e in events
            if e.event_id == EventID.SECURITY_ALERT
            and "retire key-encryption key" in (e.outcome_description or "")
        ]


@pytest.fixture(params=["local", "index"])
def data(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Data]:
    yield Data(tmp_path, request.param)


def test_a_kek_goes_only_once_no_stored_object_names_it(data: Data) -> None:
    before = data.store(OLD, BOTH)  # blobs and patient keys under k1
    data.rotate()
    after = data.store(BOTH, NEW)  # blobs under k2; BOTH's patient key still wrapped by k1

    for refused in ("k2", "k3"):  # the current one; one that does not exist
        result = data.retire(refused)
        assert result.exit_code == 2 and "not an older KEK" in result.output

    result = data.retire("k1")
    assert result.exit_code == 1, result.output
    assert "2 patient key(s) re-wrapped" in result.output  # OLD's and BOTH's, all the same
    assert "still needed by 4 stored object(s)" in result.output
    assert data.keys("list").output.split() == ["k1", "k2", "(current)"]
    assert data.readable(before + after)

    data.delete(before)  # what still named k1
    result = data.retire("k1")
    assert result.exit_code == 0, result.output
    assert "0 patient key(s) re-wrapped" in result.output  # done the first time
    assert data.keys("list").output.split() == ["k2", "(current)"]
    if data.kind == "index":
        assert KekSecret.parse(data.secret.read_text(), "t").ids == ["k2"]
    assert data.readable(after)  # without k1

    outcomes = [outcome for outcome, _ in data.retire_records()]
    assert outcomes == [
        EventOutcome.SUCCESS,  # begins
        EventOutcome.MINOR_FAILURE,  # still needed: kept
        EventOutcome.SUCCESS,  # begins
        EventOutcome.SUCCESS,  # removed
    ]
    assert "nothing needs it" in data.retire_records()[-1][1]


def test_rewrap_re_encrypts_what_names_the_kek_so_that_it_goes(data: Data) -> None:
    before = data.store(OLD, BOTH)  # four objects under k1
    data.rotate()
    after = data.store(NEW)  # two under k2

    result = data.retire("k1")
    assert result.exit_code == 1
    assert "still needed by 4 stored object(s)" in result.output
    assert "nubis keys retire k1 --rewrap" in result.output

    result = data.retire("k1", "--rewrap")
    assert result.exit_code == 0, result.output
    assert "4 object(s) re-encrypted" in result.output
    assert data.keys("list").output.split() == ["k2", "(current)"]
    if data.kind == "index":
        assert KekSecret.parse(data.secret.read_text(), "t").ids == ["k2"]
    assert data.readable(before + after)  # without k1

    # The job is one of the archive's jobs, with its progress and result.
    listed = run(["jobs", "list", "--json", "--kind", "rewrap", *data.args])
    (job,) = json.loads(listed.output)
    assert job["state"] == "done" and job["params"] == {"kek_id": "k1"}
    assert job["progress"]["done"] == job["progress"]["total"] == 6
    assert job["result"]["rewrapped"] == 4 and job["result"]["not_named"] == 2

    outcomes = [outcome for outcome, _ in data.retire_records()]
    assert outcomes[-2:] == [EventOutcome.SUCCESS, EventOutcome.SUCCESS]  # begins, removed
    with data.archive() as archive:
        events = [r.event for r in archive.audit.scan(0, 10_000)]
    changed = [e for e in events if EventType.OBJECT_SECURITY_ATTRIBUTES_CHANGED in e.event_types]
    assert len(changed) == 4
    assert all(e.participants[0].user_name == job["created_by"] for e in changed)
