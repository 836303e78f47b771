"""The README's own ``nubis`` commands run, against a live server, each exiting 0.

A newcomer's first steps are the commands the README shows; ``nubis settings`` once crashed
(issue #9, item 9). Every ``nubis`` line of the README's ``sh`` blocks is listed in RUN_AS
below, with how it is run here: as written, or as the concrete commands a line of
alternatives (``list | remove NAME``) stands for, with the README's placeholders (PATIENT_ID,
KEY_ID, 11112...) filled in from this run; or why it is not run here. A README line missing
from RUN_AS, or an entry the README no longer has, fails the test: the two cannot drift apart.

The commands run in-process (typer's CliRunner) with ``NUBIS_DATA_DIR`` set to the live
server's data folder, so they read and write the archive that server is serving, as an
operator's would.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import pytest
from typer.testing import CliRunner

from integration.dimse_helpers import free_port
from nubis.cli.main import app
from nubis.tools import synth

if TYPE_CHECKING:
    from conftest import ServerFactory

README = Path(__file__).resolve().parents[2] / "README.md"
PASSWORD = "a long enough password\n"
PATIENT_ID = "README-SHRED-1"  # the patient whose keys the README's shred-patient erases

# README line -> the commands it stands for (run in this order), or why it is not run here.
RUN_AS: dict[str, list[str] | str] = {
    "nubis serve --data-dir /srv/nubis --host 127.0.0.1 --http-port 8042": (
        "the live server of this test is this command (tests/conftest.py start_server)"
    ),
    "nubis import ~/dicom-folder": ["nubis import {folder}"],
    "nubis settings": ["nubis settings"],
    "nubis reap --grace-seconds 0": ["nubis reap --grace-seconds 0"],
    "nubis jobs list": ["nubis jobs list"],
    "nubis storage report --growth 5%/month": ["nubis storage report --growth 5%/month"],
    "nubis storage warnings --list": ["nubis storage warnings --list"],
    "nubis keys rotate": ["nubis keys rotate"],
    "nubis keys retire k1 --rewrap": ["nubis keys retire k1 --rewrap"],
    # Run last (see ORDER_LAST): it makes the patient's objects unreadable for good.
    "nubis keys shred-patient PATIENT_ID": [f"nubis keys shred-patient {PATIENT_ID} --yes"],
    "nubis retention report": ["nubis retention report"],
    "nubis users add alice --role radiologist": ["nubis users add alice --role radiologist"],
    "nubis users add dr.ref --role referrer --tenant clinic-b": [
        "nubis users add dr.ref --role referrer --tenant clinic-b"
    ],
    "nubis users grant dr.ref --patient PAT-123": ["nubis users grant dr.ref --patient PAT-123"],
    "nubis users list | remove NAME | passwd NAME | grants | revoke NAME --study 1.2.3": [
        "nubis users list",
        "nubis users grants",
        "nubis users passwd alice",
        "nubis users grant dr.ref --study 1.2.3",
        "nubis users revoke dr.ref --study 1.2.3",
        "nubis users remove dr.ref",
    ],
    "nubis apikeys create alice --days 30 --label viewer": [
        "nubis apikeys create alice --days 30 --label viewer"
    ],
    "nubis apikeys list [USER] | revoke KEY_ID": [
        "nubis apikeys list",
        "nubis apikeys list alice",
        "nubis apikeys revoke {key_id}",
    ],
    "nubis shares list [--study STUDY_UID]": [
        "nubis shares list",
        "nubis shares list --study 1.2.3",
    ],
    "nubis shares revoke LINK_ID": (
        "needs a link made in the web face: tests/unit/test_shares_cli.py revokes one"
    ),
    "nubis dimse peers add PACS 10.0.0.7 104 --no-store": [
        "nubis dimse peers add PACS 10.0.0.7 104 --no-store"
    ],
    "nubis dimse peers list": ["nubis dimse peers list"],
    "nubis dimse find 127.0.0.1 11112 --aec NUBIS -k PatientID=12345 -k StudyInstanceUID": [
        "nubis dimse find 127.0.0.1 {port} --aec NUBIS -k PatientID=12345 -k StudyInstanceUID"
    ],
    "nubis dimse echo|find|move|get|store ...": [
        "nubis dimse echo 127.0.0.1 {port} --aec NUBIS",
        "nubis dimse store 127.0.0.1 {port} --aec NUBIS {sent}",
        "nubis dimse find 127.0.0.1 {port} --aec NUBIS -k PatientID={kept} -k StudyInstanceUID",
        "nubis dimse get 127.0.0.1 {port} --aec NUBIS -k StudyInstanceUID={study} --out {got}",
    ],
    "nubis dimse peers add CT1 10.0.0.21 --tls-subject 'CN=ct1,O=Hospital'": [
        "nubis dimse peers add CT1 10.0.0.21 --tls-subject 'CN=ct1,O=Hospital'"
    ],
    # The shell's $(openssl x509 ... -fingerprint -sha256 | cut -d= -f2) prints this form.
    'nubis dimse peers add CT2 10.0.0.22 --tls-fingerprint "$(openssl x509 -in ct2.crt -noout '
    '-fingerprint -sha256 | cut -d= -f2)"': [
        "nubis dimse peers add CT2 10.0.0.22 --tls-fingerprint " + ":".join(["AB"] * 32)
    ],
    "nubis serve --blobs 's3://BUCKET/PREFIX?endpoint=https://rgw.example:7443&region=us-east-1"
    "&ca_bundle=/etc/ssl/rgw-ca.pem'": "serving from S3: tests/contract/test_s3_archive.py",
    "nubis serve --index postgresql://nubis@db.example:5432/nubis --blobs "
    "'s3://pacs/nubis?endpoint=https://rgw.example:7443'": (
        "serving from PostgreSQL and S3: tests/contract/test_scale_out.py"
    ),
    "nubis jobs run verify --param max_mb_per_s=200 --wait": [
        "nubis jobs run verify --param max_mb_per_s=200 --wait"
    ],
    "nubis jobs run verify --param study=1.2.3": ["nubis jobs run verify --param study=1.2.3"],
    "nubis jobs run verify --param heal=false": ["nubis jobs run verify --param heal=false"],
    "nubis jobs show 12 | cancel 12": ["nubis jobs show {job_id}", "nubis jobs cancel {job_id}"],
    "nubis ohif fetch --version 3.13.2 --dir /srv/nubis/ohif": (
        "downloads OHIF from npm: tests/browser/test_ohif.py fetches it with the same code"
    ),
    "nubis serve --data-dir /srv/nubis --set viewer_ohif_dir=/srv/nubis/ohif": (
        "serving OHIF: tests/browser/test_ohif.py"
    ),
    "nubis migrate run dicom://OLDPACS@10.0.0.5:104 --name oldpacs --listen-port 11113 "
    "--concurrency 4 --window 20:00-06:00": (
        "a DIMSE PACS: tests/integration/test_migrate_orthanc.py migrates from Orthanc"
    ),
    "nubis migrate run https://old.example/dicom-web --name oldweb --max-mb-per-s 50": (
        "a DICOMweb server: tests/integration/test_migrate_orthanc.py migrates from Orthanc"
    ),
    "nubis migrate run /media/cdrom --name cd-0042": ["nubis migrate run {folder} --name cd-0042"],
    "nubis migrate run dicom://OLDPACS@10.0.0.5:104 --name oldpacs --listen-port 11113 "
    "--since-last-run": "delta mode: tests/integration/test_migrate_media.py",
    "nubis backup --to /backups/nubis": "tests/integration/test_backup.py, under STOW-RS load",
    "nubis backup verify /backups/nubis": "tests/integration/test_backup.py",
    'nubis backup --to "s3://nubis-backups/site-a?endpoint=https://s3.example.org"': (
        "tests/contract/test_backup_s3.py, into the suite's Ceph bucket"
    ),
    "nubis restore --from /backups/nubis --data-dir /srv/nubis-new --keyring "
    "/safe/keyring.jsonl --audit-key /safe/audit-signing.key": (
        "a fresh data folder: tests/integration/test_backup.py restores and verifies"
    ),
    "nubis export metadata --format parquet --to /exports/meta Modality=CT": (
        "tests/integration/test_analytics.py runs nubis export metadata on an archive it fills"
    ),
    "nubis research aggregate --site https://a.example --site https://b.example --keys "
    "keys.txt slice_thickness_histogram Modality=CT": (
        "other sites: tests/integration/test_analytics.py pools two in-process sites"
    ),
    "nubis migrate report oldpacs --format csv --output oldpacs.csv": [
        "nubis migrate report cd-0042 --format csv --output {got}-report.csv"
    ],
}
ORDER_LAST = ("nubis keys shred-patient PATIENT_ID",)


def readme_commands() -> list[str]:
    """The ``nubis`` lines of the README's ``sh`` blocks, in order: continuation lines joined,
    comments and runs of spaces dropped."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command.startswith("nubis "):
                lines.append(re.sub(r" {2,}", " ", command))
    return lines


def test_every_readme_command_is_accounted_for() -> None:
    commands = readme_commands()
    assert len(commands) > 20, commands
    assert set(commands) == set(RUN_AS), (
        "README nubis commands and RUN_AS differ: "
        f"not in RUN_AS {sorted(set(commands) - set(RUN_AS))}, "
        f"not in the README {sorted(set(RUN_AS) - set(commands))}"
    )


def test_readme_commands_run(server_factory: ServerFactory, tmp_path: Path) -> None:
    """Each README command, as RUN_AS runs it, exits 0 against a live nubis serve (with its
    DICOM port, which the dimse commands talk to) holding two patients' files."""
    port = free_port()
    server = server_factory("readme", "--dimse-port", str(port))
    folder = tmp_path / "dicom-folder"
    kept = synth.PatientSpec("README-KEPT-1", "Readme^Kept", "19600101", "M")
    shredded = synth.PatientSpec(PATIENT_ID, "Readme^Shredded", "19610101", "F")
    kept_files = synth.make_mr_series(
        folder / "kept", n_instances=2, rows=16, columns=16, patient=kept, seed=71
    )
    synth.make_mr_series(
        folder / "shred", n_instances=1, rows=16, columns=16, patient=shredded, seed=72
    )
    sent = tmp_path / "sent"  # objects not imported, for nubis dimse store
    synth.make_mr_series(sent, n_instances=1, rows=16, columns=16, patient=kept, seed=73)
    filled = {
        "folder": str(folder),
        "sent": str(sent),
        "port": str(port),
        "kept": kept.patient_id,
        "study": str(pydicom.dcmread(kept_files[0], stop_before_pixels=True).StudyInstanceUID),
        "got": str(tmp_path / "got"),
    }
    runner = CliRunner()
    environment = {"NUBIS_DATA_DIR": str(server.data_dir), "COLUMNS": "200"}
    ordered = [c for c in readme_commands() if c not in ORDER_LAST] + list(ORDER_LAST)
    for line in ordered:
        how = RUN_AS[line]
        if isinstance(how, str):
            continue
        for template in how:
            command = template.format(**filled)
            # users add and users passwd ask for the password twice (typed, then confirmed).
            stdin = PASSWORD * 2 if re.match(r"nubis users (add|passwd) ", command) else None
            result = runner.invoke(app, shlex.split(command)[1:], input=stdin, env=environment)
            assert result.exit_code == 0, (command, result.output, result.exception)
            if key := re.search(r"API key (\w+) for alice", result.output):
                filled["key_id"] = key.group(1)
            if job := re.search(r"job (\d+) \(verify\) queued", result.output):
                filled["job_id"] = job.group(1)


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's commands name no data folder: only NUBIS_DATA_DIR may say where it is."""
    monkeypatch.delenv("NUBIS_CONFIG", raising=False)
