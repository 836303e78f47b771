"""Backups into an S3 bucket (issue 13): ``nubis backup --to s3://BUCKET/PREFIX?endpoint=...``
on the session's Ceph RGW. A second backup sends no blob again, ``nubis backup verify`` passes
and then catches an object tampered with in the bucket, the restore into a fresh data folder
reads every object back byte-exact, and the self-healing copy source reads from the bucket.
Backup and restore are DICOM Export and Data Import (PS3.15 A.5.3.6, A.5.3.7). In-process.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from contract import Ceph
from integration.cli import nubis_cli
from nubis.archive import Archive
from nubis.backup.check import verify_backup
from nubis.backup.copies import BackupCopies
from nubis.backup.job import KIND as BACKUP
from nubis.backup.job import Backup
from nubis.backup.restore import restore
from nubis.config import Settings, load_settings
from nubis.jobs.context import JobContext
from nubis.security.authn import cli_principal
from nubis.services.retrieve import AS_STORED
from nubis.tools.synth import dataset_bytes, series_datasets


def _settings(data_dir: Path) -> Settings:
    return load_settings(
        environ={},
        overrides={"data_dir": str(data_dir), "durable": "false", "jobs_schedule": ""},
    )


def _backup(archive: Archive, to: str) -> dict[str, Any]:
    job_id = archive.jobs.enqueue(BACKUP, {"to": to})
    assert job_id is not None
    job = archive.jobs.get(job_id)
    assert job is not None
    backup = Backup(
        archive.index, archive.blobs, archive.keys, "file", archive.guard, cli_principal()
    )
    return backup.run(JobContext(job, threading.Event()))


def test_a_backup_into_a_bucket(ceph: Ceph, tmp_path: Path) -> None:
    source_dir, restored_dir = tmp_path / "source", tmp_path / "restored"
    url = ceph.url("backup-s3", tls=True)
    stored: dict[str, bytes] = {}
    with Archive(_settings(source_dir)) as archive:
        datasets = list(series_datasets("CT", n_instances=3, rows=64, columns=64, seed=71))
        for ds in datasets:
            data = dataset_bytes(ds)
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(data)
            stored[str(ds.SOPInstanceUID)] = data
            outcome = archive.store.store(archive.spool.from_file(path), principal=cli_principal())
            assert outcome.ok, outcome.error
        first = _backup(archive, url)
    # The command line, as an operator runs it: its URL is the blob store's, its credentials
    # the AWS chain's (the fixture's environment).
    done = nubis_cli("backup", "--to", url, "--data-dir", str(source_dir), check=True)
    second = json.loads(done.stdout[done.stdout.index("{") :])
    assert (first["objects"], first["copied"], first["absent"]) == (3, 3, {})
    assert (second["copied"], second["copied_bytes"], second["already_backed_up"]) == (0, 0, 3)

    client = ceph.client()
    listed = client.list_objects_v2(Bucket=ceph.bucket, Prefix="backup-s3/")
    names = sorted(item["Key"].removeprefix("backup-s3/") for item in listed["Contents"])
    assert sum(n.startswith("blobs/") for n in names) == 3  # shared by both backups
    assert sum(n.startswith("manifests/") for n in names) == 2
    assert sum(n.startswith("index/") for n in names) == 2

    checked = verify_backup(url)
    assert checked.ok, checked.problems
    assert checked.blobs_checked == 3
    verified = json.loads(nubis_cli("backup", "verify", url, "--json", check=True).stdout)
    assert verified["ok"] and verified["blobs_checked"] == 3

    report = restore(
        url, _settings(restored_dir), cli_principal(),
        keyring=source_dir / "keyring.jsonl", audit_key=source_dir / "audit-signing.key",
    )  # fmt: skip
    assert report.objects == 3 and report.problems == [], report.problems
    with Archive(_settings(restored_dir)) as restored:
        (study,) = {str(ds.StudyInstanceUID) for ds in datasets}
        instances = restored.retrieve.instances(cli_principal(), study)
        assert {i.sop_instance_uid for i in instances} == stored.keys()
        for inst in instances:
            assert (
                b"".join(restored.retrieve.instance_chunks(inst, AS_STORED))
                == (stored[inst.sop_instance_uid])
            )
        verified = restored.audit.verify(used_by="test")
        assert verified.ok, verified.problem

    # The self-healing copy source reads a blob back from the bucket, as the manifest has it.
    blob = next(n for n in names if n.startswith("blobs/"))
    key = blob.rsplit("/", 1)[1]
    copies = BackupCopies(url)
    recorded = copies.copy_of(key, tmp_path / "copy")
    assert recorded is not None
    assert hashlib.sha256((tmp_path / "copy").read_bytes()).hexdigest() == recorded.sha256
    assert copies.copy_of("ab" * 16, tmp_path / "none") is None

    # Tampered with in the bucket (a plain client, not the backup's create-only PUTs).
    original = client.get_object(Bucket=ceph.bucket, Key=f"backup-s3/{blob}")["Body"].read()
    tampered = bytes([original[0] ^ 1]) + original[1:]
    client.put_object(Bucket=ceph.bucket, Key=f"backup-s3/{blob}", Body=tampered)
    damaged = verify_backup(url)
    assert not damaged.ok
    assert damaged.problems == [f"blob {key} differs from the manifest (damaged)"]
    assert nubis_cli("backup", "verify", url).returncode == 1
