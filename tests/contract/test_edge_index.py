"""An edge node's confirmations and evictions in the index (docs/edge.md), on every index
backend (SQLite, PostgreSQL): what the ``replicate`` job records when it retires a store, what
the ``edge-evict`` job lists and marks, and that a change since the listing keeps a study."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import Connection, func, select

from nubis.blobs.filesystem import FileBlobStore
from nubis.index import edge_sql, outbox_sql
from nubis.index.database import Index
from nubis.index.schema import edge_copies, replication_outbox
from nubis.jobs.store import now_ms
from nubis.security.policy import AuthPolicy, system_principal
from nubis.services.guard import Guard
from nubis.services.spool import Spool
from nubis.services.store import StoreService


@pytest.fixture(params=["sqlite", "postgresql"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    url = f"sqlite:///{tmp_path / 'index.sqlite'}"
    if request.param == "postgresql":
        postgres = request.getfixturevalue("postgres")
        url = str(postgres.database(f"edge_{abs(hash(request.node.nodeid)):x}"))
    idx = Index(url)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


def _service(index: Index, tmp_path: Path) -> tuple[StoreService, Spool]:
    guard = Guard(AuthPolicy(), audit=None)
    service = StoreService(
        index, FileBlobStore(tmp_path / "blobs"), guard=guard, overwrite=False, bulk_threshold=1024
    )
    return service, Spool(tmp_path / "spool")


def _forward_all(index: Index) -> None:
    """What the replicate job writes when the cloud verified each stored object."""

    def retire(conn: Connection) -> None:
        rows = conn.execute(select(replication_outbox.c.seq, replication_outbox.c.study_uid)).all()
        for seq, study in rows:
            outbox_sql.replicated(conn, seq, now_ms())
            for inst in index.instances_of("p", study):
                edge_sql.confirmed(conn, inst.pk, inst.sha256, now_ms())

    index.write(retire)


def test_only_a_confirmed_unchanged_study_is_marked_evicted(index: Index, tmp_path: Path) -> None:
    index.replicated_partition = "p"
    service, spool = _service(index, tmp_path)
    ct = Path(get_testdata_file("CT_small.dcm"))
    stored = service.store(spool.from_file(ct), principal=system_principal(tenant="p"))
    assert stored.ok
    with index.reading() as conn:
        [listed] = edge_sql.local_studies(conn)
    assert (listed.unconfirmed, listed.pending, listed.local_instances) == (1, True, 1)
    assert index.write(lambda conn: edge_sql.mark_evicted(conn, listed, now_ms())) == []

    _forward_all(index)
    with index.reading() as conn:
        [listed] = edge_sql.local_studies(conn)
    assert (listed.unconfirmed, listed.pending, listed.corrected) == (0, False, False)
    stale = edge_sql.LocalStudy(**{**listed.__dict__, "updated_at": listed.updated_at - 1})
    assert index.write(lambda conn: edge_sql.mark_evicted(conn, stale, now_ms())) == []
    [evicted] = index.write(lambda conn: edge_sql.mark_evicted(conn, listed, now_ms()))
    [inst] = index.instances_of("p", stored.study_uid or "")
    assert (evicted.pk, evicted.blob_key) == (inst.pk, inst.blob_key)
    with index.reading() as conn:
        assert edge_sql.local_studies(conn) == []  # nothing local left to list

    # Deleting the instance takes its confirmation with it (foreign key, both engines).
    index.delete("p", stored.study_uid or "")
    with index.reading() as conn:
        assert conn.execute(select(func.count()).select_from(edge_copies)).scalar_one() == 0


def test_a_confirmation_of_other_bytes_is_not_recorded(index: Index, tmp_path: Path) -> None:
    service, spool = _service(index, tmp_path)
    ct = Path(get_testdata_file("CT_small.dcm"))
    stored = service.store(spool.from_file(ct), principal=system_principal(tenant="p"))
    [inst] = index.instances_of("p", stored.study_uid or "")
    index.write(lambda conn: edge_sql.confirmed(conn, inst.pk, "0" * 64, now_ms()))
    with index.reading() as conn:
        [listed] = edge_sql.local_studies(conn)
        assert conn.execute(select(func.count()).select_from(edge_copies)).scalar_one() == 0
    assert listed.unconfirmed == 1
