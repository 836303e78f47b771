"""The guard's fail-closed recording (PS3.15 A.5, HIPAA 164.312(b)): a query's record commits
while the query runs, and no result reaches the caller unless the record committed; a store's
record commits in the same transaction as its index row, so an object is stored only if its
record is."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nubis.index.database import Index
from nubis.model.audit import AuditEvent
from nubis.model.query import Level, parse_qido
from nubis.ports.audit import AuditReceipt
from nubis.security.audit import AuditUnavailable
from nubis.security.policy import AuthPolicy, system_principal
from nubis.services.guard import Guard
from nubis.services.query import QueryService


class _Recorder:
    """An audit trail whose commits succeed or fail on demand, and that can be held back."""

    def __init__(self, *, fail: bool) -> None:
        self.fail = fail
        self.release = threading.Event()
        self.events: list[AuditEvent] = []

    def record(self, event: AuditEvent) -> AuditReceipt:
        self.release.wait(10)
        if self.fail:
            raise AuditUnavailable("the audit database is down")
        self.events.append(event)
        return AuditReceipt(len(self.events), "0" * 64)

    def record_many(self, events: list[AuditEvent]) -> list[AuditReceipt]:
        return [self.record(e) for e in events]

    def is_deferred(self, event: AuditEvent) -> bool:
        return False

    def append_job(self, events: list[AuditEvent]):  # type: ignore[no-untyped-def]
        def job(_conn: object) -> list[AuditReceipt]:
            return self.record_many(events)

        return job


@pytest.fixture
def index(tmp_path: Path):  # type: ignore[no-untyped-def]
    idx = Index(f"sqlite:///{tmp_path / 'index.sqlite'}", durable=False)
    idx.migrate()
    idx.open()
    yield idx
    idx.close()


def _query():  # type: ignore[no-untyped-def]
    return parse_qido(Level.STUDY, [("PatientID", "P1")], max_limit=100)


def test_a_query_whose_record_fails_returns_nothing(index: Index) -> None:
    recorder = _Recorder(fail=True)
    recorder.release.set()
    service = QueryService(index, Guard(AuthPolicy(), recorder))
    with pytest.raises(AuditUnavailable):
        service.search(system_principal(tenant="t"), _query())


def test_the_page_waits_for_its_record(index: Index) -> None:
    recorder = _Recorder(fail=False)
    service = QueryService(index, Guard(AuthPolicy(), recorder))
    returned = threading.Event()

    def search() -> None:
        service.search(system_principal(tenant="t"), _query())
        returned.set()

    thread = threading.Thread(target=search)
    thread.start()
    # The query itself is done in well under a second; the page must still not be returned
    # while its record has not committed.
    assert not returned.wait(1.0)
    recorder.release.set()
    assert returned.wait(10)
    thread.join()
    assert len(recorder.events) == 1


def test_a_store_whose_record_fails_is_not_stored(index: Index, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    from nubis.blobs.filesystem import FileBlobStore
    from nubis.services.spool import Spool
    from nubis.services.store import StoreService

    recorder = _Recorder(fail=True)
    recorder.release.set()
    blobs = FileBlobStore(tmp_path / "blobs")
    service = StoreService(
        index, blobs, guard=Guard(AuthPolicy(), recorder), overwrite=False, bulk_threshold=1024
    )
    spooled = Spool(tmp_path / "spool").from_file(Path(get_testdata_file("CT_small.dcm")))
    outcome = service.store(spooled, principal=system_principal(tenant="t"))
    assert isinstance(outcome.error, AuditUnavailable)
    assert outcome.error.dimse_status == 0xA700  # Out of Resources: the caller may retry
    assert index.counts() == {"studies": 0, "series": 0, "instances": 0}
    assert list(blobs.list()) == []
