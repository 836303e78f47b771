"""Corrections on every index backend (SQLite, PostgreSQL): the same statements decide search,
overlay, history, undo order, late objects and the shred's check (docs/corrections.md)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from alembic import command

from nubis.blobs.filesystem import FileBlobStore
from nubis.errors import Conflict, InvalidInstance, NotFound
from nubis.index.database import Index
from nubis.model.query import Level, parse_qido
from nubis.security.policy import AuthPolicy, system_principal
from nubis.services.corrections import CorrectionService
from nubis.services.guard import Guard
from nubis.services.retrieve import RetrieveService
from nubis.services.spool import Spool
from nubis.services.store import StoreService
from nubis.tools import synth


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    else:
        postgres = request.getfixturevalue("postgres")
        url = str(postgres.database(f"corr_{abs(hash(request.node.nodeid)):x}"))
    idx = Index(url)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


class Archive:
    def __init__(self, index: Index, tmp_path: Path) -> None:
        blobs = FileBlobStore(tmp_path / "blobs")
        guard = Guard(AuthPolicy(), audit=None)
        self.store = StoreService(index, blobs, guard=guard, overwrite=False, bulk_threshold=1024)
        self.retrieve = RetrieveService(index, blobs, guard=guard)
        # As with encryption at rest: corrections that change a study's patient queue its
        # re-key (run by tests/contract/test_rekey.py; here only queued).
        self.corrections = CorrectionService(index, guard, rekeys=True)
        self.spool = Spool(tmp_path / "spool")
        self.index = index
        self.tmp = tmp_path
        self.seed = 0
        self.who = system_principal(tenant="p")

    def put(self, patient: str, *, study_uid: str | None = None) -> pydicom.Dataset:
        self.seed += 1
        spec = synth.PatientSpec(patient, f"Name^{patient}", "19700101", "O")
        ds = next(
            synth.series_datasets(
                "CT", n_instances=1, rows=16, columns=16, seed=self.seed, patient=spec
            )
        )
        if study_uid is not None:
            ds.StudyInstanceUID = study_uid
        path = self.tmp / f"{self.seed}.dcm"
        path.write_bytes(synth.dataset_bytes(ds))
        outcome = self.store.store(self.spool.from_file(path), principal=self.who)
        if outcome.error is not None:
            raise outcome.error
        return ds

    def studies(self, patient_id: str) -> set[str]:
        query = parse_qido(Level.STUDY, [("PatientID", patient_id)], max_limit=100)
        page = self.index.search(replace(query, partition="p"))
        return {item["0020000D"]["Value"][0] for item in page.items}


def test_corrections_undo_in_order_and_late_objects(index: Index, tmp_path: Path) -> None:
    a = Archive(index, tmp_path)
    first = a.put("C-OLD")
    study = str(first.StudyInstanceUID)
    other = str(a.put("C-TARGET").StudyInstanceUID)

    moved = a.corrections.move_study(a.who, study, "C-TARGET", reason="mis-filed")
    assert a.studies("C-TARGET") == {study, other} and a.studies("C-OLD") == set()
    assert moved.changed[study]["PatientName"] == {"before": "Name^C-OLD", "after": "Name^C-TARGET"}
    (job,) = a.corrections.awaiting_rekey("p", "C-OLD")[1]
    assert a.corrections.awaiting_rekey("p", "C-OLD") == ([study], [job])
    assert a.corrections.awaiting_rekey("p", "C-TARGET") == ([study], [job])
    assert a.corrections.awaiting_rekey("p", "C-STRANGER") == ([], [])

    renamed = a.corrections.update_study(
        a.who, study, {"StudyDescription": "Corrected"}, reason="description"
    )
    # Undoing the move first would drop the later change: refused, nothing changes.
    with pytest.raises(Conflict):
        a.corrections.undo(a.who, moved.id, reason="too early")
    assert a.studies("C-TARGET") == {study, other}

    # A late object carrying the Patient ID the study was stored with joins it, served
    # corrected; another patient's is refused.
    late = a.put("C-OLD", study_uid=study)
    with pytest.raises(InvalidInstance):
        a.put("C-STRANGER", study_uid=study)
    found = a.retrieve.instances(a.who, study, sop_instance_uid=str(late.SOPInstanceUID))
    served = pydicom.dcmread(io.BytesIO(a.retrieve.instance_bytes(found[0], "*")))
    assert (served.PatientID, served.StudyDescription) == ("C-TARGET", "Corrected")

    history = a.corrections.history(a.who, study_uid=study)
    assert [c.id for c in history] == [renamed.id, moved.id]
    assert a.corrections.history(a.who, study_uid=study[:-1]) == []

    a.corrections.undo(a.who, renamed.id, reason="back")
    a.corrections.undo(a.who, moved.id, reason="back")
    assert a.studies("C-OLD") == {study} and a.studies("C-TARGET") == {other}
    # Back under the patient it arrived with; its re-key (still queued: one job) checks that
    # every object is under that key again before a shred of either may go ahead.
    assert a.corrections.awaiting_rekey("p", "C-OLD") == ([study], [job])
    assert a.corrections.awaiting_rekey("p", "C-TARGET") == ([study], [job])
    with pytest.raises(Conflict):
        a.corrections.undo(a.who, moved.id, reason="twice")


def test_merge_moves_every_study_and_only_in_the_tenant(index: Index, tmp_path: Path) -> None:
    a = Archive(index, tmp_path)
    goes = {str(a.put("M-GOES").StudyInstanceUID) for _ in range(3)}
    stays = str(a.put("M-STAYS").StudyInstanceUID)
    merged = a.corrections.merge_patients(a.who, "M-GOES", "M-STAYS", reason="duplicate")
    assert set(merged.study_uids) == goes
    assert a.studies("M-STAYS") == goes | {stays}
    other_tenant = system_principal(tenant="q")
    with pytest.raises(NotFound):
        a.corrections.merge_patients(other_tenant, "M-STAYS", "X", reason="not mine")
    with pytest.raises(NotFound):
        a.corrections.undo(other_tenant, merged.id, reason="not mine")
    a.corrections.undo(a.who, merged.id, reason="wrong")
    assert a.studies("M-GOES") == goes


def test_a_patient_correction_reaches_every_study_of_the_patient(
    index: Index, tmp_path: Path
) -> None:
    a = Archive(index, tmp_path)
    uids = {str(a.put("P-TYPO").StudyInstanceUID) for _ in range(2)}
    done = a.corrections.update_patient(
        a.who, "P-TYPO", {"PatientID": "P-RIGHT", "PatientSex": "F"}, reason="typo"
    )
    assert set(done.study_uids) == uids
    assert a.studies("P-RIGHT") == uids and a.studies("P-TYPO") == set()
    with pytest.raises(NotFound):
        a.corrections.update_patient(a.who, "P-TYPO", {"PatientSex": "M"}, reason="gone")


def test_studies_moved_before_rekeying_existed_are_queued_by_the_migration(
    index: Index, tmp_path: Path
) -> None:
    """Revision 0016 records every study a correction had moved (its objects are under the
    key of the patient they arrived with) and queues one rekey job for them."""
    a = Archive(index, tmp_path)
    study = str(a.put("M-OLD").StudyInstanceUID)
    a.put("M-OTHER")
    a.corrections.rekeys = False  # as before revision 0016
    a.corrections.move_study(a.who, study, "M-NEW", reason="mis-filed")
    assert a.corrections.awaiting_rekey("p", "M-OLD") == ([], [])
    with index.write_engine.connect() as conn:
        command.downgrade(index._alembic_config(conn), "0015")
        conn.commit()
    index.migrate()
    studies, jobs = a.corrections.awaiting_rekey("p", "M-OLD")
    assert studies == [study] and len(jobs) == 1
    assert a.corrections.awaiting_rekey("p", "M-NEW") == ([study], jobs)
    assert a.corrections.awaiting_rekey("p", "M-OTHER") == ([], [])
