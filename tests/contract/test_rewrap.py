"""The ``rewrap`` job: stored objects stop naming an old KEK, with nothing lost on the way.

Run on the folder store (with tier folders) over SQLite and PostgreSQL, and on S3 over the
suite's real Ceph RGW, under the local keyring. Objects are real DICOM (nubis.tools.synth),
read back byte for byte through the retrieve service; headers are read the way ``nubis keys
retire`` reads them (nubis.services.kek_retirement). The crash test SIGKILLs a job worker
between a new blob's put and its index swap.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from contract import ARCHIVE_BACKENDS, archive_overrides
from nubis.archive import Archive
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.config import load_settings
from nubis.crypto.envelope import HEADER_RESERVE, parse_header
from nubis.crypto.local_keys import LocalKeyring
from nubis.errors import RestoreRequired
from nubis.index.schema import doomed_blobs
from nubis.jobs.store import Job, JobState
from nubis.model.audit import EventID, EventOutcome, EventType
from nubis.model.records import StoredInstance
from nubis.ports.blobs import BlobContext
from nubis.security.policy import system_principal
from nubis.services.kek_retirement import retire_kek
from nubis.services.kek_rewrap import KekRewrap
from nubis.services.retrieve import AS_STORED, blob_context
from nubis.tools.synth import PatientSpec, dataset_bytes, series_datasets

WHO = system_principal()
ANNA = PatientSpec("REWRAP-ANNA", "Anna^A", "19700101", "F")
BORIS = PatientSpec("REWRAP-BORIS", "Boris^B", "19700101", "M")


@dataclass
class Setup:
    overrides: dict[str, str]
    archive: Archive
    files: dict[str, bytes]  # SOP Instance UID -> the file as sent
    studies: dict[str, str]  # patient ID -> Study Instance UID

    @property
    def blobs(self) -> EncryptedBlobStore:
        assert isinstance(self.archive.blobs, EncryptedBlobStore)
        return self.archive.blobs

    @property
    def keys(self) -> LocalKeyring:
        assert isinstance(self.archive.keys, LocalKeyring)
        return self.archive.keys

    def store(self, patient: PatientSpec, n: int, seed: int) -> None:
        """A series of ``n`` objects, in the patient's study if it has one already."""
        study = self.studies.get(patient.patient_id)
        for ds in series_datasets(
            "CT", n_instances=n, rows=64, columns=64, seed=seed, patient=patient, study_uid=study
        ):
            data = dataset_bytes(ds)
            with self.archive.spool.writer() as writer:
                writer.write(data)
                spooled = writer.finish()
            outcome = self.archive.store.store(spooled, principal=WHO)
            assert outcome.ok, outcome.error
            self.files[ds.SOPInstanceUID] = data
            self.studies[patient.patient_id] = ds.StudyInstanceUID

    def instances(self) -> list[StoredInstance]:
        return [
            inst
            for study in self.studies.values()
            for inst in self.archive.retrieve.instances(WHO, study)
        ]

    def all_byte_exact(self) -> bool:
        """Every object retrieved whole (the WADO-RS / C-MOVE path) is the file as sent."""
        found = self.instances()
        assert len(found) == len(self.files)
        for inst in found:
            data = b"".join(self.archive.retrieve.instance_chunks(inst, AS_STORED))
            assert data == self.files[inst.sop_instance_uid], inst.sop_instance_uid
            assert hashlib.sha256(data).hexdigest() == inst.sha256
        return True

    def kek_ids(self) -> list[str]:
        """The KEK each object's header names."""
        named = []
        for inst in self.instances():
            wrapped = self.blobs.wrapped_key(inst.blob_key, context=blob_context(inst))
            assert wrapped is not None
            named.append(wrapped.key_id)
        return named

    def blob_count(self) -> int:
        return len(list(self.archive.blobs.list()))

    def doomed(self) -> int:
        with self.archive.index.reading() as conn:
            return int(conn.execute(select(func.count()).select_from(doomed_blobs)).scalar_one())

    def run_job(self, **params: Any) -> Job:
        job_id = self.archive.jobs.enqueue("rewrap", {"kek_id": "k1", **params})
        assert job_id is not None
        runner = self.archive.job_runner
        assert runner is not None
        assert runner.run_once()
        job = self.archive.jobs.get(job_id)
        assert job is not None
        return job

    def audit_events(self) -> list[Any]:
        return [r.event for r in self.archive.audit.scan(0, 100_000)]


@pytest.fixture(params=ARCHIVE_BACKENDS)
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    overrides = archive_overrides(request, tmp_path, "rewrap", lifecycle="unread>30d -> cold")
    archive = Archive(load_settings(environ={}, overrides=overrides))
    archive.index.migrate()
    archive.index.open()
    archive.audit.open()
    found = Setup(overrides, archive, {}, {})
    # Anna's study is under k1 and in the cold tier, Boris's under k1 (his first object) and
    # k2; the job must re-wrap exactly the first four objects.
    found.store(ANNA, 3, seed=11)
    found.store(BORIS, 1, seed=12)
    assert archive.lifecycle.pin("default", found.studies[ANNA.patient_id], "cold")
    archive.lifecycle.run()
    assert found.keys.rotate() == "k2"
    found.store(BORIS, 1, seed=13)
    assert sorted(found.kek_ids()) == ["k1", "k1", "k1", "k1", "k2"]
    yield found
    archive.audit.close()
    archive.index.close()


def test_rewrap_then_retire_removes_the_kek_and_every_object_reads_the_same(setup: Setup) -> None:
    archive = setup.archive
    before = {inst.sop_instance_uid: inst for inst in setup.instances()}
    old_deks = {uid: _stored_dek(setup, inst) for uid, inst in before.items()}

    job = setup.run_job()
    assert job.state is JobState.DONE, job.last_error
    assert job.result is not None
    assert job.result["rewrapped"] == 4 and job.result["not_named"] == 1
    assert job.result["problems"] == [] and job.result["checked"] == 5
    assert job.progress_done == job.progress_total == 5

    assert setup.all_byte_exact()
    assert setup.kek_ids() == ["k2"] * 5
    after = {inst.sop_instance_uid: inst for inst in setup.instances()}
    for uid, inst in after.items():
        old_key = before[uid].blob_key
        kek, dek = _stored_dek(setup, inst)
        if old_deks[uid][0] == "k1":
            # A new blob with a fresh data key (not the old one re-wrapped), old blob gone.
            assert inst.blob_key != old_key and kek == "k2" and dek != old_deks[uid][1]
            assert inst.pk == before[uid].pk and inst.sha256 == before[uid].sha256
        else:
            assert inst.blob_key == old_key
    # The cold study's new blobs are where the index says they are.
    mover = archive.lifecycle.mover
    assert mover is not None
    anna = archive.retrieve.instances(WHO, setup.studies[ANNA.patient_id])
    cold = archive.tiers.get("cold").target if archive.settings.blobs.startswith("s3") else "cold"
    assert {mover.where(inst.blob_key) for inst in anna} == {cold}
    facts = archive.lifecycle.study_tiers("default", setup.studies[ANNA.patient_id])
    assert facts is not None and set(facts["tiers"]) == {"cold"}
    # No old blob left, nothing for the reaper.
    assert setup.blob_count() == 5 and setup.doomed() == 0
    report = archive.maintenance.reap(grace_seconds=0)
    assert (report.orphans_deleted, report.doomed_deleted) == (0, 0)

    # A second run finds nothing to do.
    again = setup.run_job()
    assert again.result is not None and again.result["not_named"] == 5
    assert "rewrapped" not in again.result

    # Retirement reads every header and finds nothing that needs k1 any more.
    check = retire_kek(archive.index, setup.blobs, setup.keys, "k1")
    assert (check.objects, check.unchecked, check.patient_keys) == (0, 0, 0)
    assert not check.needed
    setup.keys.remove_kek("k1")
    assert setup.keys.key_ids() == ["k2"]
    assert setup.all_byte_exact()  # without k1

    events = setup.audit_events()
    per_object = [
        e for e in events if EventType.OBJECT_SECURITY_ATTRIBUTES_CHANGED in e.event_types
    ]
    assert len(per_object) == 4
    assert {o.object_id for e in per_object for o in e.objects} >= {
        ANNA.patient_id,
        BORIS.patient_id,
        setup.studies[ANNA.patient_id],
    }
    job_records = [
        (e.outcome, e.outcome_description or "")
        for e in events
        if e.event_id == EventID.SECURITY_ALERT
        and f"key-encryption key k1 (job {job.id})" in (e.outcome_description or "")
    ]
    assert [outcome for outcome, _ in job_records] == [EventOutcome.SUCCESS] * 2
    assert job_records[0][1].endswith("begins")
    assert "4 rewrapped" in job_records[1][1] and "1 not_named" in job_records[1][1]


def _stored_dek(setup: Setup, inst: StoredInstance) -> tuple[str, bytes]:
    """The KEK a blob's stored header names and the data key it unwraps to (read below the
    encryption, as stored)."""
    context = blob_context(inst)
    header = parse_header(setup.blobs.inner.read(inst.blob_key, 0, HEADER_RESERVE, context=context))
    assert header.wrapped is not None
    dek = setup.keys.unwrap(header.wrapped, aad=header.associated_data(context))
    return header.wrapped.key_id, dek


def _swap_with(
    monkeypatch: pytest.MonkeyPatch, before_swap: Callable[[StoredInstance | Any], None]
) -> None:
    """Run ``before_swap(obj)`` at the seam between a new blob's put and its index swap."""
    swap = KekRewrap._swap

    def seam(self: KekRewrap, obj: Any, new_key: str, record: Any) -> bool:
        before_swap(obj)
        return swap(self, obj, new_key, record)

    monkeypatch.setattr(KekRewrap, "_swap", seam)


def test_a_delete_between_put_and_swap_wins(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = setup.archive
    boris = setup.studies[BORIS.patient_id]
    deleted: list[str] = []

    def delete_boris(obj: Any) -> None:
        if obj.context.study_uid == boris and not deleted:
            deleted.append(obj.key)
            archive.maintenance.delete(WHO, boris)

    _swap_with(monkeypatch, delete_boris)
    job = setup.run_job(workers=1)
    assert job.state is JobState.DONE, job.last_error
    assert job.result is not None
    assert job.result["rewrapped"] == 3  # Anna's
    # Boris's k1 object lost its swap to the delete; his k2 object went with the study.
    assert job.result["changed"] >= 1 and deleted
    del setup.studies[BORIS.patient_id]
    left = {inst.sop_instance_uid for inst in setup.instances()}
    setup.files = {uid: data for uid, data in setup.files.items() if uid in left}
    assert setup.all_byte_exact()
    assert setup.kek_ids() == ["k2"] * 3
    # The loser's new blob was deleted at once: only Anna's three blobs are left.
    assert setup.blob_count() == 3
    assert archive.maintenance.reap(grace_seconds=0).orphans_deleted == 0


def test_a_tier_move_between_put_and_swap_wins(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = setup.archive
    anna = setup.studies[ANNA.patient_id]
    moved: list[str] = []

    def move_anna_to_hot(obj: Any) -> None:
        if obj.context.study_uid == anna and not moved:
            moved.append(obj.key)
            assert archive.lifecycle.pin("default", anna, "hot")
            assert archive.lifecycle.run()["moved_to_hot"] == 3

    _swap_with(monkeypatch, move_anna_to_hot)
    job = setup.run_job(workers=1)
    assert job.state is JobState.DONE and job.result is not None
    # Each of Anna's objects was copied into cold, where its page said it was: none swapped.
    assert job.result["changed"] == 3 and job.result["rewrapped"] == 1
    mover = archive.lifecycle.mover
    assert mover is not None
    hot = archive.tiers.get("hot").target if archive.settings.blobs.startswith("s3") else "hot"
    assert {mover.where(i.blob_key) for i in archive.retrieve.instances(WHO, anna)} == {hot}
    assert setup.blob_count() == 5
    assert setup.all_byte_exact()

    monkeypatch.undo()  # a later run does them, in the tier they are in now
    job = setup.run_job()
    assert job.result is not None and job.result["rewrapped"] == 3
    assert {mover.where(i.blob_key) for i in archive.retrieve.instances(WHO, anna)} == {hot}
    assert setup.kek_ids() == ["k2"] * 5
    assert setup.blob_count() == 5


def test_two_rewraps_of_one_object_swap_once(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs on the same KEK (an operator queued a second one): the later swap loses."""
    swap = KekRewrap._swap
    raced: list[str] = []

    def first_another_job_does_it(self: KekRewrap, obj: Any, new_key: str, record: Any) -> bool:
        if not raced:
            raced.append(obj.key)
            assert self._rewrap(obj, "k1", self.actor, 99, []) == "rewrapped"
        return swap(self, obj, new_key, record)

    monkeypatch.setattr(KekRewrap, "_swap", first_another_job_does_it)
    job = setup.run_job(workers=1)
    assert job.state is JobState.DONE, job.last_error
    assert job.result is not None
    assert job.result["changed"] == 1 and job.result["rewrapped"] == 3
    assert setup.kek_ids() == ["k2"] * 5
    assert setup.all_byte_exact()
    # The loser's new blob was deleted; the winner's old blob waits in the reaper's queue.
    assert setup.blob_count() == 5 and setup.doomed() == 1
    report = setup.archive.maintenance.reap(grace_seconds=0)
    assert (report.orphans_deleted, report.doomed_deleted) == (0, 1)


def test_an_object_is_never_moved_to_another_patients_key(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Patient ID other than the stored one would wrap the new blob under another patient's
    key, which a shred of the real patient would then miss: such an object is kept as it is."""
    assert setup.archive.rewrap is not None
    monkeypatch.setattr(setup.archive.rewrap, "_patient_candidates", lambda pk: ["SOMEONE-ELSE"])
    job = setup.run_job()
    assert job.state is JobState.DONE and job.result is not None
    assert job.result["key_mismatch"] == 4 and "rewrapped" not in job.result
    assert sorted(setup.kek_ids()) == ["k1", "k1", "k1", "k1", "k2"]
    assert setup.blob_count() == 5  # each new blob deleted again
    assert setup.all_byte_exact()


def test_a_swap_too_late_for_the_reapers_grace_is_abandoned(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert setup.archive.rewrap is not None
    monkeypatch.setattr(setup.archive.rewrap, "orphan_grace_seconds", 0)
    job = setup.run_job()
    assert job.state is JobState.DONE and job.result is not None
    assert job.result["abandoned"] == 4 and "rewrapped" not in job.result
    assert len(job.result["problems"]) == 4
    assert sorted(setup.kek_ids()) == ["k1", "k1", "k1", "k1", "k2"]
    assert setup.all_byte_exact()
    assert setup.blob_count() == 5  # every new blob deleted again


def test_objects_awaiting_restore_are_counted_not_fatal(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ceph serves GLACIER objects without a restore, so an archived blob is a stub here."""
    archived = {
        inst.blob_key
        for inst in setup.archive.retrieve.instances(WHO, setup.studies[ANNA.patient_id])
    }
    wrapped_key = setup.blobs.wrapped_key

    def header(key: str, *, context: BlobContext) -> Any:
        if key in archived:
            raise RestoreRequired("the object is in archive storage; a restore was requested")
        return wrapped_key(key, context=context)

    monkeypatch.setattr(setup.blobs, "wrapped_key", header)
    job = setup.run_job()
    assert job.state is JobState.DONE, job.last_error
    assert job.result is not None
    assert job.result["awaiting_restore"] == 3 and job.result["rewrapped"] == 1
    assert [p["problem"] for p in job.result["problems"]] == ["awaiting_restore"] * 3
    events = setup.audit_events()
    assert events[-1].outcome == EventOutcome.MINOR_FAILURE
    assert "3 awaiting_restore" in (events[-1].outcome_description or "")

    monkeypatch.undo()  # restored: a later run does them
    job = setup.run_job()
    assert job.result is not None and job.result["rewrapped"] == 3
    assert setup.kek_ids() == ["k2"] * 5
    assert setup.all_byte_exact()


_DYING_WORKER = """
import json, os, signal, sys
from nubis.archive import Archive
from nubis.config import load_settings
from nubis.jobs.runner import JobRunner
from nubis.services.kek_rewrap import KekRewrap

archive = Archive(load_settings(environ={}, overrides=json.loads(sys.argv[1])))
archive.index.open()
archive.audit.open()
swap, swaps = KekRewrap._swap, []

def dying_swap(self, obj, new_key, record):
    swaps.append(new_key)
    if len(swaps) == 2:  # the second object's new blob is stored, its row not yet swapped
        os.kill(os.getpid(), signal.SIGKILL)
    return swap(self, obj, new_key, record)

KekRewrap._swap = dying_swap
JobRunner(archive.jobs, {"rewrap": archive.rewrap.run}, lease_seconds=1).run_once()
"""


def test_a_worker_killed_between_put_and_swap_loses_nothing(setup: Setup) -> None:
    archive = setup.archive
    job_id = archive.jobs.enqueue("rewrap", {"kek_id": "k1", "workers": 1})
    worker = subprocess.run(
        [sys.executable, "-c", _DYING_WORKER, json.dumps(setup.overrides)],
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ},
    )
    assert worker.returncode == -9, worker.stderr.decode()[-3000:]

    # The first object was swapped (its old blob deleted, still queued as doomed); the second
    # object's row still names its old blob, whose new copy nothing names: an orphan.
    assert setup.all_byte_exact()
    assert sorted(setup.kek_ids()) == ["k1", "k1", "k1", "k2", "k2"]
    assert setup.blob_count() == 6 and setup.doomed() == 1
    report = archive.maintenance.reap(grace_seconds=0)
    assert (report.orphans_deleted, report.doomed_deleted) == (1, 1)
    assert setup.blob_count() == 5
    assert setup.all_byte_exact()

    # Another runner takes the job over once the dead one's lease runs out, and finishes it.
    runner = archive.job_runner
    assert runner is not None
    deadline = time.monotonic() + 10
    while not runner.run_once():
        assert time.monotonic() < deadline, "the killed worker's job was never taken over"
        time.sleep(0.2)
    job = archive.jobs.get(job_id)  # type: ignore[arg-type]
    assert job is not None and job.state is JobState.DONE, job and job.last_error
    assert job.attempts == 2
    assert setup.kek_ids() == ["k2"] * 5
    assert setup.all_byte_exact()
    assert setup.blob_count() == 5
    assert archive.maintenance.reap(grace_seconds=0).orphans_deleted == 0


@pytest.mark.parametrize("kek_id", ["k9", "k2"])
def test_a_kek_that_is_not_an_older_one_fails_the_job_at_once(setup: Setup, kek_id: str) -> None:
    """An unknown KEK, or the current one, is a mistake no retry mends: one attempt, failed."""
    job = setup.run_job(kek_id=kek_id)
    assert job.state == JobState.FAILED and job.attempts == 1, (job.state, job.attempts)
    assert "is not an older key-encryption key" in (job.last_error or "")
    assert sorted(setup.kek_ids()) == ["k1", "k1", "k1", "k1", "k2"]
