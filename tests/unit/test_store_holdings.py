"""``StoreService.holdings``: what a migration learns of a study it may not read (issue 12).

A study held in quarantine is seen by admins only (docs/security.md); a migration, which
stores as a radiologist of its tenant, must still know which of its objects are there, or a
resumed or delta run moves them again. The presence check answers SOP Instance UIDs and
digests, authorized as WRITE (storing says as much: a re-sent object is answered as already
stored), within the writer's tenant; reading the study stays refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from nubis.blobs.filesystem import FileBlobStore
from nubis.errors import Forbidden, NotFound
from nubis.index.database import Index
from nubis.migrate.request import migration_principal
from nubis.security.policy import AuthPolicy, Principal
from nubis.services.guard import Guard
from nubis.services.retrieve import RetrieveService
from nubis.services.spool import Spool
from nubis.services.store import StoreService


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    index = Index(f"sqlite:///{tmp_path / 'index.sqlite'}", durable=False)
    index.migrate()
    index.open()
    yield index
    index.close()


def test_a_held_study_is_present_to_its_writer_and_unreadable(
    index: Index, tmp_path: Path
) -> None:
    guard = Guard(AuthPolicy(), audit=None)
    blobs = FileBlobStore(tmp_path / "blobs")
    store = StoreService(index, blobs, guard=guard, overwrite=False, bulk_threshold=1024)
    retrieve = RetrieveService(index, blobs, guard=guard)
    spool = Spool(tmp_path / "spool")
    who = migration_principal("held", "t1")
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    ct.save_as(files[0])
    ct.PatientID = "OTHER-PATIENT"  # a typo fixed halfway: the study is held
    ct.SOPInstanceUID = ct.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.8"
    ct.save_as(files[1])
    for path in files:
        outcome = store.store(spool.from_file(path), principal=who, patient_conflict="quarantine")
        assert outcome.ok, outcome.error
    study = str(ct.StudyInstanceUID)

    with pytest.raises(NotFound):
        retrieve.instances(who, study, transfer=False)  # held: admins only
    holdings = store.holdings(who, study)
    assert holdings.digests == {
        str(pydicom.dcmread(p).SOPInstanceUID): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
    }
    # Another tenant's writer learns nothing; a role that may not store is refused.
    assert store.holdings(migration_principal("held", "t2"), study).digests == {}
    referrer = Principal("ref", "t1", frozenset({"referrer"}))
    with pytest.raises(Forbidden):
        store.holdings(referrer, study)
