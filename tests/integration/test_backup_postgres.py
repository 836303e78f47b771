"""Backup and restore of an archive whose index is PostgreSQL (issue 13): ``pg_dump`` of an
exported snapshot (Debian's, of the server's major version), ``pg_restore`` into a fresh
database, the blobs copied back; every object reads back byte-exact and the audit trail, the
original's chain continued, verifies. Restore is recorded as DICOM Data Import (PS3.15
A.5.3.7). In-process, on the session's PostgreSQL server.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select

from nubis.archive import Archive
from nubis.backup.check import verify_backup
from nubis.backup.job import KIND as BACKUP
from nubis.backup.job import Backup
from nubis.backup.restore import restore
from nubis.config import Settings, load_settings
from nubis.index.schema import studies
from nubis.jobs.context import JobContext
from nubis.security.authn import cli_principal
from nubis.services.retrieve import AS_STORED
from nubis.tools.synth import dataset_bytes, series_datasets

if TYPE_CHECKING:
    from conftest import Postgres

IMPORT = "110107"


def _settings(data_dir: Path, index: str) -> Settings:
    return load_settings(
        environ={},
        overrides={"data_dir": str(data_dir), "index": index, "durable": "false",
                   "jobs_schedule": ""},
    )  # fmt: skip


def test_a_postgresql_archive_backs_up_and_restores(postgres: Postgres, tmp_path: Path) -> None:
    source_dir, restored_dir, folder = tmp_path / "source", tmp_path / "restored", tmp_path / "B"
    source_db = postgres.database("backup_source")
    stored: dict[str, bytes] = {}
    with Archive(_settings(source_dir, source_db)) as archive:
        for ds in series_datasets("CT", n_instances=3, rows=64, columns=64, seed=61):
            data = dataset_bytes(ds)
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            path.write_bytes(data)
            stored[str(ds.SOPInstanceUID)] = data
            outcome = archive.store.store(archive.spool.from_file(path), principal=cli_principal())
            assert outcome.ok, outcome.error
        archive.audit.checkpoint()  # a signed checkpoint the restore must carry on from
        job_id = archive.jobs.enqueue(BACKUP, {"to": str(folder)})
        assert job_id is not None
        job = archive.jobs.get(job_id)
        assert job is not None
        backup = Backup(
            archive.index, archive.blobs, archive.keys, "file", archive.guard, cli_principal()
        )
        result = backup.run(JobContext(job, threading.Event()))
    assert result["objects"] == 3 and result["absent"] == {}
    assert [p.name for p in (folder / "index").iterdir()] == [f"{result['backup']}.pgdump"]
    checked = verify_backup(str(folder))
    assert checked.ok, checked.problems
    assert checked.manifest is not None and checked.manifest.engine == "postgresql"

    restored_db = postgres.database("backup_restored")
    settings = _settings(restored_dir, restored_db)
    report = restore(
        str(folder), settings, cli_principal(),
        keyring=source_dir / "keyring.jsonl", audit_key=source_dir / "audit-signing.key",
    )  # fmt: skip
    assert report.objects == 3 and report.problems == [], report.problems

    with Archive(settings) as archive:
        assert archive.index.dialect == "postgresql"
        with archive.index.reading() as conn:
            (study,) = conn.scalars(select(studies.c.study_uid)).all()
        instances = archive.retrieve.instances(cli_principal(), study)
        assert {i.sop_instance_uid for i in instances} == stored.keys()
        for inst in instances:
            data = b"".join(archive.retrieve.instance_chunks(inst, AS_STORED))
            assert data == stored[inst.sop_instance_uid]
        verified = archive.audit.verify(used_by="test")
        assert verified.ok, verified.problem
        assert verified.checkpoints >= 1
        imports = [
            e for e in (r.event_dict for r in archive.audit.scan(limit=100000))
            if e["event_id"]["code"] == IMPORT
        ]  # fmt: skip
        assert any("restore of the backup" in e["outcome_description"] for e in imports)
