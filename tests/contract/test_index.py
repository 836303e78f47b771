"""The index contract: every index backend (SQLite, PostgreSQL) passes the same tests.

Migrations, two-phase store, duplicates, delete bookkeeping, concurrent writers; on the
backends that run several nodes on one database (PostgreSQL), two Index objects stand for two
nodes writing the same study, the same instance, and deleting while storing (issue 5).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless
from sqlalchemy import func, select

from nubis.blobs.filesystem import FileBlobStore
from nubis.errors import BadRequest, DuplicateInstance, NotFound
from nubis.index.database import Index
from nubis.index.schema import (
    INSTANCES_LOCATED,
    instance_warnings,
    instances,
    metadata,
    quarantined_studies,
    series,
    studies,
)
from nubis.model.records import StoreResult
from nubis.security.policy import AuthPolicy, system_principal
from nubis.services.guard import Guard
from nubis.services.quarantine import QuarantineService, StudyStillDisagrees
from nubis.services.retrieve import blob_context
from nubis.services.spool import Spool
from nubis.services.store import StoreService
from nubis.tools.synth import make_corpus


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.database(f"contract_{abs(hash(request.node.nodeid)):x}"))


@pytest.fixture
def index(index_url: str) -> Iterator[Index]:
    idx = Index(index_url)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


def test_migrated_schema_matches_schema_module(index: Index) -> None:
    assert index.schema_version() == index.head_version()
    with index.read_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_migrate_is_idempotent(index: Index) -> None:
    index.migrate()
    assert index.schema_version() == index.head_version()


def _service(
    index: Index, tmp_path: Path, *, overwrite: bool = False
) -> tuple[StoreService, Spool]:
    blobs = FileBlobStore(tmp_path / "blobs")
    guard = Guard(AuthPolicy(), audit=None)
    service = StoreService(index, blobs, guard=guard, overwrite=overwrite, bulk_threshold=1024)
    return service, Spool(tmp_path / "spool")


def test_store_duplicate_and_conflict(index: Index, tmp_path: Path) -> None:
    service, spool = _service(index, tmp_path)
    ct = Path(get_testdata_file("CT_small.dcm"))
    first = service.store(spool.from_file(ct), principal=system_principal(tenant="p"))
    assert first.ok and first.result is StoreResult.STORED
    again = service.store(spool.from_file(ct), principal=system_principal(tenant="p"))
    assert again.ok and again.result is StoreResult.ALREADY_STORED

    changed = tmp_path / "changed.dcm"
    data = bytearray(ct.read_bytes())
    # Same UIDs, a different pixel: the last pixel's high byte, before CT_small's Data Set
    # Trailing Padding (FFFC,FFFC), whose bytes mean nothing (PS3.10 7.2).
    data[data.rindex(b"\xfc\xff\xfc\xff") - 1] ^= 0xFF
    changed.write_bytes(bytes(data))
    conflict = service.store(spool.from_file(changed), principal=system_principal(tenant="p"))
    assert isinstance(conflict.error, DuplicateInstance)
    assert conflict.error.dimse_status == 0x0111
    [stored] = index.instances_of("p", first.study_uid or "")
    assert service.blobs.read(stored.blob_key, context=blob_context(stored)) == ct.read_bytes()
    assert index.counts() == {"studies": 1, "series": 1, "instances": 1}
    assert list(spool.folder.iterdir()) == []


def test_overwrite_policy_replaces(index: Index, tmp_path: Path) -> None:
    service, spool = _service(index, tmp_path, overwrite=True)
    ct = Path(get_testdata_file("CT_small.dcm"))
    service.store(spool.from_file(ct), principal=system_principal(tenant="p"))
    changed = tmp_path / "changed.dcm"
    data = bytearray(ct.read_bytes())
    data[data.rindex(b"\xfc\xff\xfc\xff") - 1] ^= 0xFF  # a pixel, not the padding
    changed.write_bytes(bytes(data))
    outcome = service.store(spool.from_file(changed), principal=system_principal(tenant="p"))
    assert outcome.result is StoreResult.REPLACED
    [stored] = index.instances_of("p", outcome.study_uid or "")
    assert service.blobs.read(stored.blob_key, context=blob_context(stored)) == bytes(data)
    assert len(list(service.blobs.list())) == 1


def test_partitions_are_separate(index: Index, tmp_path: Path) -> None:
    service, spool = _service(index, tmp_path)
    ct = Path(get_testdata_file("CT_small.dcm"))
    outcome = service.store(spool.from_file(ct), principal=system_principal(tenant="a"))
    with pytest.raises(NotFound):
        index.instances_of("b", outcome.study_uid or "")


def test_delete_updates_counts_and_queues_blobs(index: Index, tmp_path: Path) -> None:
    service, spool = _service(index, tmp_path)
    outcomes = [
        service.store(
            spool.from_file(Path(get_testdata_file(name))), principal=system_principal(tenant="p")
        )
        for name in ("CT_small.dcm", "MR_small.dcm")
    ]
    assert index.counts()["instances"] == 2
    ct = outcomes[0]
    assert index.delete("p", ct.study_uid or "", ct.series_uid, ct.sop_instance_uid) == 1
    assert index.counts() == {"studies": 1, "series": 1, "instances": 1}
    assert len(index.doomed_blob_keys()) == 1
    with pytest.raises(NotFound):
        index.delete("p", ct.study_uid or "")


def test_walk_visits_every_row_once_in_pages(index: Index, tmp_path: Path) -> None:
    """Index.walk_instances: every instance once, in id order, pages no longer than asked,
    filtered by ``where``, resumed after the last key seen; a study deleted between pages is
    not read, and the walk still ends."""
    service, spool = _service(index, tmp_path)
    for path in make_corpus(tmp_path / "corpus", n_studies=5, rows=16, columns=16):
        outcome = service.store(spool.from_file(path), principal=system_principal(tenant="p"))
        assert outcome.ok, outcome.error
    with index.reading() as conn:
        stored = conn.execute(
            select(instances.c.id, studies.c.study_uid, series.c.modality)
            .select_from(INSTANCES_LOCATED)
            .order_by(instances.c.id)
        ).all()
    assert len(stored) == 5

    pages = list(index.walk_instances([studies.c.study_uid, series.c.modality], page=2))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [tuple(r) for p in pages for r in p] == [tuple(r) for r in stored]

    resumed = [r[0] for p in index.walk_instances([], after=stored[2][0], page=2) for r in p]
    assert resumed == [r[0] for r in stored[3:]]

    mr = [r[0] for p in index.walk_instances([], where=[series.c.modality == "MR"]) for r in p]
    assert mr == [r[0] for r in stored if r[2] == "MR"]

    walk = index.walk_instances([], page=2)
    first = next(walk)
    index.delete("p", stored[-1][1])
    assert [r[0] for r in first] + [r[0] for p in walk for r in p] == [r[0] for r in stored[:-1]]


def test_group_commit_under_concurrency(index: Index, tmp_path: Path) -> None:
    """Many threads storing at once: every store commits exactly once."""
    from nubis.tools.synth import make_ct_series

    files = make_ct_series(tmp_path / "ct", n_instances=40, rows=64, columns=64)
    service, spool = _service(index, tmp_path)
    results: list[bool] = []

    def worker(chunk: list[Path]) -> None:
        for path in chunk:
            results.append(
                service.store(spool.from_file(path), principal=system_principal(tenant="p")).ok
            )

    threads = [threading.Thread(target=worker, args=(files[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 40
    assert index.counts() == {"studies": 1, "series": 1, "instances": 40}


# --------------------------------------------------------------------------- two nodes, one index
@pytest.fixture
def two_nodes(index_url: str, tmp_path: Path) -> Iterator[tuple[StoreService, StoreService]]:
    """Two Index objects on one database and one blob store: two nodes, as issue 5 runs them."""
    blobs = FileBlobStore(tmp_path / "blobs")
    nodes = []
    for _node in range(2):
        idx = Index(index_url)
        idx.migrate()  # every node migrates at start; the second finds nothing to do
        idx.open()
        guard = Guard(AuthPolicy(), audit=None)
        nodes.append(StoreService(idx, blobs, guard=guard, overwrite=False, bulk_threshold=1024))
    yield nodes[0], nodes[1]
    for node in nodes:
        node.index.close()


def _run_threads(*targets: Callable[[], None]) -> None:
    errors: list[BaseException] = []

    def run(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def _consistent(index: Index, partition: str) -> None:
    """Every study's and series' counts and ModalitiesInStudy agree with the rows beneath."""
    with index.reading() as conn:
        for study_pk, n_series, n_instances, modalities in conn.execute(
            select(
                studies.c.id, studies.c.num_series, studies.c.num_instances, studies.c.modalities
            ).where(studies.c.partition == partition)
        ):
            rows = conn.execute(
                select(series.c.id, series.c.num_instances, series.c.modality).where(
                    series.c.study_pk == study_pk
                )
            ).all()
            assert n_series == len(rows) > 0
            assert modalities == "\\".join(sorted({r.modality for r in rows if r.modality}))
            total = 0
            for row in rows:
                count = conn.execute(
                    select(func.count()).where(instances.c.series_pk == row.id)
                ).scalar_one()
                assert row.num_instances == count > 0
                total += count
            assert n_instances == total


def test_two_nodes_store_one_new_study_at_once(
    two_nodes: tuple[StoreService, StoreService], tmp_path: Path
) -> None:
    """Both nodes create the study and its series at the same moment: one study row, exact
    counts, both modalities in ModalitiesInStudy (PS3.18 10.6.3)."""
    from nubis.tools.synth import make_ct_series, make_mr_series

    study = "1.2.826.0.1.3680043.10.1078.77.1"
    ct = make_ct_series(tmp_path / "ct", n_instances=24, rows=32, columns=32, study_uid=study)
    mr = make_mr_series(tmp_path / "mr", n_instances=24, rows=32, columns=32, study_uid=study)
    spool = Spool(tmp_path / "spool")
    who = system_principal(tenant="p")

    def store(node: StoreService, files: list[Path]) -> Callable[[], None]:
        def run() -> None:
            for path in files:
                outcome = node.store(spool.from_file(path), principal=who)
                assert outcome.ok, outcome.error

        return run

    a, b = two_nodes
    files = ct + mr
    _run_threads(*(store(node, files[i::6]) for i, node in enumerate([a, b] * 3)))
    assert a.index.counts() == {"studies": 1, "series": 2, "instances": 48}
    _consistent(b.index, "p")


def test_two_nodes_store_the_same_instance_at_once(
    two_nodes: tuple[StoreService, StoreService], tmp_path: Path
) -> None:
    """The same object from both nodes at once: one row, the other answer says already stored
    (PS3.4 B.2.3 allows success for a duplicate of the same object); no blob is left behind."""
    ct = Path(get_testdata_file("CT_small.dcm"))
    spool = Spool(tmp_path / "spool")
    who = system_principal(tenant="p")
    results: list[StoreResult | None] = []

    def store(node: StoreService) -> Callable[[], None]:
        def run() -> None:
            for _ in range(5):
                results.append(node.store(spool.from_file(ct), principal=who).result)

        return run

    a, b = two_nodes
    _run_threads(store(a), store(b), store(a), store(b))
    assert results.count(StoreResult.STORED) == 1
    assert results.count(StoreResult.ALREADY_STORED) == 19
    assert a.index.counts() == {"studies": 1, "series": 1, "instances": 1}
    assert len(list(a.blobs.list())) == 1


def test_two_nodes_race_for_one_study_or_series(
    two_nodes: tuple[StoreService, StoreService], tmp_path: Path
) -> None:
    """A study belongs to one patient and a series to one study, also when two nodes store the
    conflicting objects at the same moment: of each pair exactly one is stored, the other is
    refused with 0xA900 (docs/security.md, "One study, one patient")."""
    from nubis.tools import synth

    spool = Spool(tmp_path / "spool")
    who = system_principal(tenant="p")
    rounds = 12
    paths: dict[str, list[Path]] = {"a": [], "b": []}
    for n in range(rounds):
        shared = synth.synth_uid(n, "race")
        for side, patient in (("a", "PAT-A"), ("b", "PAT-B")):
            ds = next(synth.series_datasets("CT", n_instances=1, seed=n * 2 + (side == "b"),
                patient=synth.PatientSpec(patient, "Race^Jo", "19700101", "F")))  # fmt: skip
            if n % 2:  # one study UID for two patients
                ds.StudyInstanceUID = shared
            else:  # one series UID in two studies
                ds.SeriesInstanceUID = shared
            path = tmp_path / f"{side}{n}.dcm"
            path.write_bytes(synth.dataset_bytes(ds))
            paths[side].append(path)
    outcomes: dict[str, list[int]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def store(node: StoreService, side: str) -> Callable[[], None]:
        def run() -> None:
            for path in paths[side]:
                spooled = spool.from_file(path)
                barrier.wait(timeout=60)
                outcome = node.store(spooled, principal=who)
                outcomes[side].append(0 if outcome.ok else outcome.error.dimse_status)

        return run

    a, b = two_nodes
    _run_threads(store(a, "a"), store(b, "b"))
    for n in range(rounds):
        assert sorted((outcomes["a"][n], outcomes["b"][n])) == [0, 0xA900], n
    assert a.index.counts()["instances"] == rounds
    _consistent(a.index, "p")


def test_delete_on_one_node_while_the_other_stores(
    two_nodes: tuple[StoreService, StoreService], tmp_path: Path
) -> None:
    """Deletes of a study race with stores into it: whatever interleaving, the index stays
    consistent and every blob is either referenced or queued for the reaper."""
    from nubis.tools.synth import make_ct_series

    study = "1.2.826.0.1.3680043.10.1078.77.2"
    files = make_ct_series(tmp_path / "ct", n_instances=40, rows=32, columns=32, study_uid=study)
    spool = Spool(tmp_path / "spool")
    who = system_principal(tenant="p")
    a, b = two_nodes
    done = threading.Event()

    def store() -> None:
        try:
            for path in files:
                assert a.store(spool.from_file(path), principal=who).ok
        finally:
            done.set()

    def delete() -> None:
        while not done.is_set():
            with contextlib.suppress(NotFound):
                b.index.delete("p", study)

    _run_threads(store, delete)
    if a.index.counts()["instances"]:
        _consistent(a.index, "p")
    stored_keys = {info.key for info in a.blobs.list()}
    assert a.index.referenced_blob_keys(list(stored_keys)) == stored_keys


# --------------------------------------------------------------------------- the audit chain
def test_two_nodes_append_to_one_audit_chain(index_url: str, tmp_path: Path) -> None:
    """Nodes append concurrently, yet the chain stays one unbroken sequence that verifies
    (PS3.15 A.5; issue 4's tamper-evidence holds with many writers)."""
    from nubis.security import audit_events
    from nubis.security.audit import AuditTrail

    trails = []
    for _node in range(2):
        idx = Index(index_url, durable=False)
        idx.migrate()
        idx.open()
        trail = AuditTrail(
            idx,
            key_path=tmp_path / "audit-signing.key",
            source_id="NUBIS",
            checkpoint_every=7,
            checkpoint_seconds=0,
        )
        trail.open()
        trails.append(trail)

    def append(trail: AuditTrail, who: str) -> Callable[[], None]:
        def run() -> None:
            for i in range(30):
                trail.record(audit_events.study_deleted(who, study_uids=[f"1.2.{i}"]))

        return run

    try:
        _run_threads(*(append(trails[n % 2], f"user{n}") for n in range(6)))
        report = trails[1].verify()
        assert report.ok, report
        assert report.records == 180 and report.checkpoints == 180 // 7
    finally:
        for trail in trails:
            trail.index.close()


def test_audit_tables_refuse_update_and_delete(index: Index, tmp_path: Path) -> None:
    """Append-only at the database too, on every backend (defence in depth, PS3.15 A.5)."""
    from nubis.security import audit_events
    from nubis.security.audit import AuditTrail

    trail = AuditTrail(
        index, key_path=tmp_path / "audit.key", source_id="NUBIS", checkpoint_every=0
    )
    trail.record(audit_events.study_deleted("alice", study_uids=["1.2.3"]))
    for sql in ("UPDATE audit_log SET user_id = 'mallory'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"), index.write_engine.begin() as conn:
            conn.exec_driver_sql(sql)
    assert trail.head()[0] == 1


@pytest.mark.parametrize("overwrite", [False, True])
def test_the_same_instance_in_another_encoding_is_already_stored(
    index: Index, tmp_path: Path, overwrite: bool
) -> None:
    """Issue 12: a re-sent instance whose data set equals the stored one apart from transfer
    syntax, file meta or group lengths is the same instance: success with a warning naming it
    (PS3.4 B.2.3 0xB000), whatever on_conflict says, and the stored object is kept as it was;
    the warning is recorded on the stored instance. A different data set still conflicts."""
    service, spool = _service(index, tmp_path, overwrite=overwrite)
    who = system_principal(tenant="p")
    original = Path(get_testdata_file("MR_small.dcm"))
    first = service.store(spool.from_file(original), principal=who)
    assert first.ok and first.result is StoreResult.STORED and first.warnings == ()
    # The same pixels in RLE, JPEG-LS lossless, JPEG 2000 lossless, big endian, implicit VR.
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ):
        again = service.store(spool.from_file(Path(get_testdata_file(name))), principal=who)
        assert again.ok, (name, again.error)
        assert again.result is StoreResult.SAME_INSTANCE, name
        [warning] = again.warnings
        assert (warning.reason, warning.status) == ("same-instance-other-encoding", 0xB000)
        assert "1.2.840.10008.1.2.1" in warning.detail
    [stored] = index.instances_of("p", first.study_uid or "")
    assert service.blobs.read(stored.blob_key, context=blob_context(stored)) == (
        original.read_bytes()
    )
    assert len(list(service.blobs.list())) == 1
    with index.reading() as conn:
        rows = conn.execute(
            select(instance_warnings.c.instance_pk, instance_warnings.c.status)
        ).all()
    assert [tuple(r) for r in rows] == [(stored.pk, 0xB000)]

    # One pixel changed in the compressed copy's decoded form is another object.
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.PixelData = ds.PixelData[:-2] + bytes([ds.PixelData[-2] ^ 1]) + ds.PixelData[-1:]
    ds.compress(RLELossless, generate_instance_uid=False)
    changed = tmp_path / "changed_rle.dcm"
    ds.save_as(changed, enforce_file_format=True)
    outcome = service.store(spool.from_file(changed), principal=who)
    if overwrite:
        assert outcome.result is StoreResult.REPLACED
    else:
        assert isinstance(outcome.error, DuplicateInstance)
        assert service.blobs.read(stored.blob_key, context=blob_context(stored)) == (
            original.read_bytes()
        )
    assert list(spool.folder.iterdir()) == []


def test_a_patient_conflict_is_quarantined_when_asked(index: Index, tmp_path: Path) -> None:
    """Issue 12: with patient_conflict = quarantine, an object naming another Patient ID under
    a stored study is stored, the study held in quarantine (absent from scoped reads unless
    they see it) and the instance warned; refused (0xA900) otherwise, as before."""
    service, spool = _service(index, tmp_path)
    who = system_principal(tenant="p")
    first = service.store(spool.from_file(Path(get_testdata_file("CT_small.dcm"))), principal=who)
    other = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    other.PatientID = "SOMEONE-ELSE"
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"
    path = tmp_path / "other.dcm"
    other.save_as(path)
    refused = service.store(spool.from_file(path), principal=who)
    assert refused.error is not None and refused.error.dimse_status == 0xA900
    held = service.store(spool.from_file(path), principal=who, patient_conflict="quarantine")
    assert held.ok and held.result is StoreResult.QUARANTINED
    assert [(w.reason, w.status) for w in held.warnings] == [("patient-conflict", 0xB007)]
    study = first.study_uid or ""
    with pytest.raises(NotFound):
        index.instances_of("p", study)
    assert len(index.instances_of("p", study, hide_quarantined=False)) == 2
    with index.reading() as conn:
        assert conn.execute(select(func.count()).select_from(quarantined_studies)).scalar() == 1


def test_a_series_conflict_is_quarantined_under_its_own_study(index: Index, tmp_path: Path) -> None:
    """Issue 12: with quarantine on, an object whose Series Instance UID another study of the
    partition holds is stored under its own study, which is held for ``series-conflict``
    (refused with 0xA900 otherwise, as before); the study holding the series first stays as
    it was. The held study is not let out while the other study holds the series, but as
    resolved; a study held for both conflicts says both."""
    service, spool = _service(index, tmp_path)
    admin = system_principal(tenant="p")
    quarantine = QuarantineService(index, guard=service.guard)
    source = Path(get_testdata_file("CT_small.dcm"))
    first = service.store(spool.from_file(source), principal=admin)
    assert first.ok and first.result is StoreResult.STORED

    def same_series(name: str, patient_id: str) -> Path:
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.PatientID = "1.2.3.99", patient_id
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.3.99.{len(name)}"
        ds.save_as(tmp_path / name)
        return tmp_path / name

    moved = same_series("moved.dcm", str(pydicom.dcmread(source).PatientID))
    refused = service.store(spool.from_file(moved), principal=admin)
    assert refused.error is not None and refused.error.dimse_status == 0xA900
    assert "series belongs to another study" in refused.error.reason
    held = service.store(spool.from_file(moved), principal=admin, patient_conflict="quarantine")
    assert held.ok and held.result is StoreResult.QUARANTINED
    assert [(w.reason, w.status) for w in held.warnings] == [("series-conflict", 0xB007)]
    assert [(s.study_uid, s.reasons) for s in quarantine.held(admin)] == [
        ("1.2.3.99", ("series-conflict",))
    ]
    # The first study is not touched: seen as before.
    assert len(index.instances_of("p", first.study_uid or "")) == 1
    with pytest.raises(NotFound):
        index.instances_of("p", "1.2.3.99")
    assert len(index.instances_of("p", "1.2.3.99", hide_quarantined=False)) == 1
    with pytest.raises(StudyStillDisagrees, match="Series Instance UID"):
        quarantine.release(admin, "1.2.3.99", reason="not yet")

    # Another patient under the held study, in the same series: held for both.
    other = same_series("other-patient.dcm", "SOMEONE-ELSE")
    also = service.store(spool.from_file(other), principal=admin, patient_conflict="quarantine")
    assert also.ok and [w.reason for w in also.warnings] == ["patient-conflict"]
    [listed] = quarantine.held(admin)
    assert (listed.reasons, listed.instances) == (("series-conflict", "patient-conflict"), 2)

    with pytest.raises(BadRequest):
        quarantine.release(admin, "1.2.3.99", reason=" ", resolved=True)
    released = quarantine.release(admin, "1.2.3.99", reason="a reused UID", resolved=True)
    assert released.reasons == ("series-conflict", "patient-conflict")
    assert quarantine.held(admin) == []
    assert len(index.instances_of("p", "1.2.3.99")) == 2


def test_quarantine_reasons_of_revision_0014_become_codes(index_url: str) -> None:
    """Revision 0017: a study held by revision 0014's code (its reason the warning's text)
    is held for the code ``patient-conflict``."""
    index = Index(index_url)
    index.migrate("0015")
    with index.write_engine.begin() as conn:
        study_pk = conn.execute(
            studies.insert().values(
                partition="p", study_uid="1.2.3", attrs="{}", created_at=0, updated_at=0,
                modalities="", num_series=0, num_instances=0,
            ).returning(studies.c.id)
        ).scalar_one()  # fmt: skip
        conn.execute(
            quarantined_studies.insert().values(
                study_pk=study_pk, since=0, reason="the study holds another Patient ID "
                "(0010,0020): stored, and the study held in quarantine (admins only) until "
                "a correction releases it",
            )
        )  # fmt: skip
    index.migrate()
    with index.write_engine.connect() as conn:
        reasons = conn.execute(select(quarantined_studies.c.reason)).scalars().all()
    index.write_engine.dispose()
    assert reasons == ["patient-conflict"]


def test_a_legal_hold_stops_erase_and_due_studies_are_found(index: Index, tmp_path: Path) -> None:
    """Legal holds and the retention pass on every engine (docs/retention.md): a patient's
    hold refuses Index.erase inside its transaction until released; the due studies come a
    page at a time with the patient's latest study counted (last_study)."""
    from datetime import date

    from nubis.errors import OnLegalHold
    from nubis.retention.evaluate import due_studies
    from nubis.retention.rules import Rule
    from nubis.services.legal_holds import HoldTarget, LegalHolds

    service, spool = _service(index, tmp_path)
    stored = [
        service.store(
            spool.from_file(Path(get_testdata_file(name))), principal=system_principal(tenant="p")
        )
        for name in ("CT_small.dcm", "MR_small.dcm")
    ]
    ct = stored[0]
    rules = [Rule("all", 1, after="last_study")]
    pages = list(due_studies(index, rules, date(2100, 1, 1), page=1))
    assert [n for _, n, _ in pages] == [1, 1]
    assert {c.study_uid for _, _, due in pages for c in due} == {s.study_uid for s in stored}
    # A day before their retention ends: both read, none due.
    early = list(due_studies(index, rules, date(1990, 1, 1)))
    assert sum(n for _, n, _ in early) == 2 and not any(due for _, _, due in early)

    holds = LegalHolds(index, Guard(AuthPolicy(), None))
    admin = system_principal(tenant="p")
    with index.reading() as conn:
        patient = conn.execute(
            select(studies.c.patient_id).where(studies.c.study_uid == ct.study_uid)
        ).scalar_one()
    hold = holds.place(admin, HoldTarget(patient_id=patient), "contract")
    with pytest.raises(OnLegalHold):
        index.erase("p", ct.study_uid or "")
    with pytest.raises(OnLegalHold):
        holds.refuse_shred(admin, "p", patient)
    holds.release(admin, hold.id, "done")
    erased = index.erase("p", ct.study_uid or "")
    assert [row.sop_instance_uid for row in erased] == [ct.sop_instance_uid]
