"""The ``rekey`` job: a study a correction files under another patient ends up under that
patient's key, so a crypto-shred follows the correction (docs/corrections.md, "Encryption at
rest"; docs/security.md).

Run on the folder store over SQLite and PostgreSQL and on S3 over the suite's real Ceph RGW,
under the local keyring, with real DICOM (nubis.tools.synth). Objects are read back byte for
byte as stored (below the correction's overlay); headers are read as ``nubis keys retire``
reads them. Both directions (the old patient shredded, then the new one), a merge and its
undo, a late object of a moved study, and a worker SIGKILLed between a put and its swap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from contract import ARCHIVE_BACKENDS, archive_overrides
from nubis.archive import Archive
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.config import load_settings
from nubis.errors import KeyErased
from nubis.index.schema import study_rekeys
from nubis.jobs.store import Job, JobState
from nubis.model.audit import EventType
from nubis.model.records import StoredInstance
from nubis.security.policy import system_principal
from nubis.services.retrieve import blob_context
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets

WHO = system_principal()
ANNA = PatientSpec("REKEY-ANNA", "Anna^A", "19700101", "F")
BORIS = PatientSpec("REKEY-BORIS", "Boris^B", "19700101", "M")


@dataclass
class Setup:
    overrides: dict[str, str]
    archive: Archive
    files: dict[str, bytes]  # SOP Instance UID -> the file as sent
    studies: dict[str, str]  # patient ID -> Study Instance UID (as stored)

    @property
    def blobs(self) -> EncryptedBlobStore:
        assert isinstance(self.archive.blobs, EncryptedBlobStore)
        return self.archive.blobs

    def store(self, patient: PatientSpec, n: int, seed: int, study: str | None = None) -> None:
        for ds in series_datasets(
            "CT", n_instances=n, rows=32, columns=32, seed=seed, patient=patient, study_uid=study
        ):
            data = dataset_bytes(ds)
            with self.archive.spool.writer() as writer:
                writer.write(data)
                spooled = writer.finish()
            outcome = self.archive.store.store(spooled, principal=WHO)
            assert outcome.ok, outcome.error
            self.files[ds.SOPInstanceUID] = data
            self.studies.setdefault(patient.patient_id, ds.StudyInstanceUID)

    def instances(self, patient: PatientSpec) -> list[StoredInstance]:
        return self.archive.retrieve.instances(WHO, self.studies[patient.patient_id])

    def readable(self, patient: PatientSpec) -> bool:
        """Whether the study stored for ``patient`` decrypts, byte for byte as sent."""
        try:
            for inst in self.instances(patient):
                data = b"".join(self.blobs.iter_chunks(inst.blob_key, context=blob_context(inst)))
                assert data == self.files[inst.sop_instance_uid]
        except KeyErased:
            return False
        return True

    def keyed_as(self, patient: PatientSpec) -> set[str]:
        """The patient key ids the headers of the study stored for ``patient`` name."""
        named = set()
        for inst in self.instances(patient):
            wrapped = self.blobs.wrapped_key(inst.blob_key, context=blob_context(inst))
            assert wrapped is not None
            named.add(wrapped.subject)
        return named

    def key_of(self, patient: PatientSpec) -> str:
        return self.blobs.keys.patient_key_id("default", patient.patient_id)

    def awaiting(self, patient: PatientSpec) -> tuple[list[str], list[int]]:
        return self.archive.corrections.awaiting_rekey("default", patient.patient_id)

    def pending_rows(self) -> int:
        with self.archive.index.reading() as conn:
            return int(conn.execute(select(func.count()).select_from(study_rekeys)).scalar_one())

    def run_queued(self) -> Job:
        """Run the queued rekey job to its end here."""
        (job_id,) = self.awaiting_jobs()
        runner = self.archive.job_runner
        assert runner is not None and runner.run_once()
        job = self.archive.jobs.get(job_id)
        assert job is not None and job.state is JobState.DONE, job and job.last_error
        return job

    def awaiting_jobs(self) -> list[int]:
        return [j.id for j in self.archive.jobs.list(kind="rekey", states=[JobState.QUEUED])]

    def rekey_events(self) -> list[Any]:
        return [
            r.event
            for r in self.archive.audit.scan(0, 100_000)
            if EventType.OBJECT_SECURITY_ATTRIBUTES_CHANGED in r.event.event_types
        ]


def _setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    overrides = archive_overrides(request, tmp_path, "rekey")
    archive = Archive(load_settings(environ={}, overrides=overrides))
    archive.index.migrate()
    archive.index.open()
    archive.audit.open()
    found = Setup(overrides, archive, {}, {})
    found.store(ANNA, 2, seed=21)
    found.store(BORIS, 1, seed=22)
    assert found.keyed_as(ANNA) == {found.key_of(ANNA)} != found.keyed_as(BORIS)
    yield found
    archive.audit.close()
    archive.index.close()


@pytest.fixture(params=ARCHIVE_BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    yield from _setup(request, tmp_path)


@pytest.fixture(params=["folder-sqlite"])
def one_setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    yield from _setup(request, tmp_path)


def test_a_moved_study_follows_its_new_patient_into_a_shred(setup: Setup) -> None:
    archive = setup.archive
    anna_study = setup.studies[ANNA.patient_id]
    moved = archive.corrections.move_study(WHO, anna_study, BORIS.patient_id, reason="mis-filed")
    # Queued with the correction; until it has run, a shred of either patient must wait.
    (job_id,) = setup.awaiting_jobs()
    assert setup.awaiting(ANNA) == ([anna_study], [job_id])
    assert setup.awaiting(BORIS) == ([anna_study], [job_id])
    assert setup.readable(ANNA)  # under Anna's key still

    job = setup.run_queued()
    assert job.result is not None
    assert (job.result["rekeyed"], job.result["studies_rekeyed"]) == (2, 1), job.result
    assert job.result["problems"] == [] and job.progress_done == job.progress_total == 2
    assert setup.keyed_as(ANNA) == {setup.key_of(BORIS)}  # the study stored for Anna
    assert setup.awaiting(ANNA) == ([], []) and setup.awaiting(BORIS) == ([], [])
    assert setup.pending_rows() == 0
    # The old blobs are gone; nothing is left to the reaper.
    assert len(list(archive.blobs.list())) == 3
    report = archive.maintenance.reap(grace_seconds=0)
    assert (report.orphans_deleted, report.doomed_deleted) == (0, 0)
    # Retrieval shows the correction over the same stored bytes.
    served = archive.retrieve.instances(WHO, anna_study)
    assert {i.sha256 for i in served} == {i.sha256 for i in setup.instances(ANNA)}
    events = setup.rekey_events()
    assert len(events) == 2
    assert all(BORIS.patient_id in {o.object_id for o in e.objects} for e in events)
    assert all(f"(job {job_id})" in (e.outcome_description or "") for e in events)

    # The old patient's shred leaves the study that is no longer theirs.
    assert archive.keys is not None and archive.keys.shred_patient("default", ANNA.patient_id)
    assert setup.readable(ANNA) and setup.readable(BORIS)
    # The new patient's shred takes it with their own.
    assert archive.keys.shred_patient("default", BORIS.patient_id)
    assert not setup.readable(ANNA) and not setup.readable(BORIS)
    assert moved.kind == "move"


def test_a_merge_and_its_undo_rekey_both_ways(one_setup: Setup) -> None:
    setup = one_setup
    archive = setup.archive
    anna_key, boris_key = setup.key_of(ANNA), setup.key_of(BORIS)
    merged = archive.corrections.merge_patients(
        WHO, ANNA.patient_id, BORIS.patient_id, reason="duplicate registration"
    )
    setup.run_queued()
    assert setup.keyed_as(ANNA) == {boris_key} and setup.keyed_as(BORIS) == {boris_key}

    archive.corrections.undo(WHO, merged.id, reason="two people after all")
    anna_study = setup.studies[ANNA.patient_id]
    (job_id,) = setup.awaiting_jobs()
    assert setup.awaiting(ANNA) == ([anna_study], [job_id])
    assert setup.awaiting(BORIS) == ([anna_study], [job_id])
    job = setup.run_queued()
    assert job.result is not None and job.result["rekeyed"] == 2
    assert setup.keyed_as(ANNA) == {anna_key} and setup.keyed_as(BORIS) == {boris_key}
    assert len(setup.rekey_events()) == 4

    assert archive.keys is not None and archive.keys.shred_patient("default", BORIS.patient_id)
    assert setup.readable(ANNA) and not setup.readable(BORIS)


def test_a_late_object_of_a_moved_study_is_rekeyed_too(one_setup: Setup) -> None:
    """A delta migration re-sends an object carrying the Patient ID the study was moved away
    from: it is stored under that patient's key, and the study queued for re-keying again."""
    setup = one_setup
    archive = setup.archive
    anna_study = setup.studies[ANNA.patient_id]
    archive.corrections.move_study(WHO, anna_study, BORIS.patient_id, reason="mis-filed")
    setup.run_queued()
    assert setup.pending_rows() == 0

    setup.store(ANNA, 1, seed=23, study=anna_study)
    assert setup.keyed_as(ANNA) == {setup.key_of(ANNA), setup.key_of(BORIS)}
    (job_id,) = setup.awaiting_jobs()
    assert setup.awaiting(ANNA) == ([anna_study], [job_id])
    job = setup.run_queued()
    assert job.result is not None
    assert (job.result["rekeyed"], job.result["keyed"]) == (1, 2), job.result
    assert setup.keyed_as(ANNA) == {setup.key_of(BORIS)}
    assert setup.awaiting(ANNA) == ([], [])


def test_a_correction_that_keeps_the_patient_queues_nothing(one_setup: Setup) -> None:
    setup = one_setup
    setup.archive.corrections.update_study(
        WHO, setup.studies[ANNA.patient_id], {"PatientName": "Anna^Corrected"}, reason="typo"
    )
    assert setup.pending_rows() == 0 and setup.awaiting_jobs() == []


_DYING_WORKER = """
import json, os, signal, sys
from concurrent.futures import ThreadPoolExecutor
from nubis.archive import Archive
from nubis.config import load_settings
from nubis.jobs.runner import JobRunner
from nubis.services.study_rekey import StudyRekey

archive = Archive(load_settings(environ={}, overrides=json.loads(sys.argv[1])))
archive.index.open()
archive.audit.open()
swap, swaps = StudyRekey._swap, []

def dying_swap(self, obj, new_key, record):
    swaps.append(new_key)
    if len(swaps) == 2:  # the second object's new blob is stored, its row not yet swapped
        os.kill(os.getpid(), signal.SIGKILL)
    return swap(self, obj, new_key, record)

StudyRekey._swap = dying_swap
StudyRekey._pool = lambda self, ctx: ThreadPoolExecutor(1)  # one swap after the other
JobRunner(archive.jobs, {"rekey": archive.rekey.run}, lease_seconds=1).run_once()
"""


def test_a_worker_killed_between_put_and_swap_resumes_and_loses_nothing(
    one_setup: Setup,
) -> None:
    setup = one_setup
    archive = setup.archive
    anna_study = setup.studies[ANNA.patient_id]
    archive.corrections.move_study(WHO, anna_study, BORIS.patient_id, reason="mis-filed")
    (job_id,) = setup.awaiting_jobs()
    worker = subprocess.run(
        [sys.executable, "-c", _DYING_WORKER, json.dumps(setup.overrides)],
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ},
    )
    assert worker.returncode == -9, worker.stderr.decode()[-3000:]
    # Reads go on: one object under each key, each read under the key its header names.
    assert setup.keyed_as(ANNA) == {setup.key_of(ANNA), setup.key_of(BORIS)}
    assert setup.readable(ANNA)
    assert setup.awaiting(BORIS)[0] == [anna_study]

    # Taken over once the dead worker's lease has run out; the orphan is the reaper's.
    runner = archive.job_runner
    assert runner is not None
    deadline = time.monotonic() + 10
    while not runner.run_once():
        assert time.monotonic() < deadline, "the killed worker's job was never taken over"
        time.sleep(0.2)
    job = archive.jobs.get(job_id)
    assert job is not None and job.state is JobState.DONE, job and job.last_error
    assert job.attempts == 2 and job.result is not None
    # The first object was swapped before the kill: the resumed run finds it keyed already.
    assert (job.result["rekeyed"], job.result["keyed"]) == (1, 1), job.result
    assert job.result["studies_rekeyed"] == 1
    assert setup.keyed_as(ANNA) == {setup.key_of(BORIS)}
    assert setup.readable(ANNA)
    assert archive.maintenance.reap(grace_seconds=0).orphans_deleted == 1
    assert len(list(archive.blobs.list())) == 3
    assert setup.awaiting(ANNA) == ([], []) and setup.awaiting(BORIS) == ([], [])
