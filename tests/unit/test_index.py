"""The index: migrations, two-phase store, duplicates, delete bookkeeping, group commit."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydicom.data import get_testdata_file

from nubis.blobs.filesystem import FileBlobStore
from nubis.errors import DuplicateInstance, NotFound
from nubis.index.database import Index
from nubis.index.schema import metadata
from nubis.model.records import StoreResult
from nubis.security.policy import AuthPolicy, system_principal
from nubis.services.guard import Guard
from nubis.services.retrieve import blob_context
from nubis.services.spool import Spool
from nubis.services.store import StoreService


@pytest.fixture
def index(tmp_path: Path):  # type: ignore[no-untyped-def]
    idx = Index(f"sqlite:///{tmp_path / 'index.sqlite'}")
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
    data[-1] ^= 0xFF  # same UIDs, different pixel byte
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
    data[-1] ^= 0xFF
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
