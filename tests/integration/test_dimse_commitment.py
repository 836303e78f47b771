"""Storage commitment reports that survive an unreachable requester (PS3.4 J.3.3).

A pynetdicom SCU sends the N-ACTION and releases its association at once, as PS3.4 J.3.2.1.2
lets it ("At any time after receipt of the N-ACTION-Response, the SCU may release the
association"), with its listening AE down. nubis must then report on an association of its
own (J.3.3.1.2: "An SCP shall be capable of issuing the N-EVENT-REPORT on a different
association"), proposing the SCP role for itself to the address in the peer table (J.3.3.1.3
Note). The report waits in the index as a ``commitment-report`` job, retried with backoff on
any node, across restarts, until the SCU takes it or the give-up time passes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from integration import DicomFile
from integration.cli import nubis_cli
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import free_port, need_dcmtk, run
from integration.server import Server, start_server

WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"  # PS3.4 J.3.5
MISSING = "1.2.826.0.1.3680043.10.1.406"


# How long nubis waits for the answer to a report it sent on the N-ACTION's association: the
# SCU, releasing it, ignores one that arrives meanwhile (default 60 s).
_REPORT_TIMEOUT = 2


def _env(dimse_port: int, **settings: object) -> dict[str, str]:
    """A short first retry, a short wait for an ignored report and a runner that polls every
    second keep the tests quick."""
    values = {
        "dimse_port": dimse_port,
        "workers": 1,
        "dimse_commitment_retry_seconds": 1,
        "dimse_response_seconds": _REPORT_TIMEOUT,
        "jobs_poll_seconds": 1,
        "jobs_lease_seconds": 3,
        **settings,
    }
    return {f"NUBIS_{name.upper()}": str(value) for name, value in values.items()}


def _nubis(data_dir: Path, *args: str) -> str:
    return nubis_cli(*args, "--data-dir", str(data_dir), check=True).stdout


def _rows(data_dir: Path, query: str) -> list[tuple[Any, ...]]:
    uri = f"file:{(data_dir / 'index.sqlite').resolve()}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
        return list(conn.execute(query))


def _job(data_dir: Path) -> tuple[str, int, str | None]:
    """State, attempts and last error of the (one) commitment-report job."""
    ((state, attempts, error),) = _rows(
        data_dir, "SELECT state, attempts, last_error FROM jobs WHERE kind = 'commitment-report'"
    )
    return state, attempts, error


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.1)


def _commitment_records(data_dir: Path, calling_ae: str) -> list[dict[str, Any]]:
    """The audit records of storage commitment reports requested by ``calling_ae``, once there
    are any: a read record is written after up to audit_read_flush_ms, so it may come a moment
    after the job's end."""

    def records() -> list[dict[str, Any]]:
        rows = _rows(
            data_dir, f"SELECT record FROM audit_log WHERE user_id = 'dimse:{calling_ae}'"
        )
        events = [json.loads(record)["event"] for (record,) in rows]
        return [r for r in events if "storage commitment" in r.get("outcome_description", "")]

    _wait(lambda: bool(records()), "an audit record of the report", timeout=10)
    return records()


@dataclass
class Modality:
    """A requesting AE: it asks for commitment on one port and listens on another."""

    ae_title: str
    listen_port: int
    reports: list[tuple[str, str, int, Dataset]]
    arrived: threading.Event

    def request(self, nubis_port: int, transaction_uid: str, refs: list[tuple[str, str]]) -> None:
        """N-ACTION (J.3.2), then release at once: the report cannot come on this association."""
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate("127.0.0.1", nubis_port, ae_title=NUBIS_AE)
        assert assoc.is_established
        request = Dataset()
        request.TransactionUID = transaction_uid
        items = []
        for sop_class, sop_uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_uid
            items.append(item)
        request.ReferencedSOPSequence = items
        try:
            status, _ = assoc.send_n_action(
                request, 1, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
            )
        finally:
            assoc.release()
        assert status.Status == 0x0000  # J.3.2.1.3: the request is received

    @contextmanager
    def listening(self) -> Iterator[None]:
        """The modality's listener, accepting nubis's proposal to be the Storage Commitment SCP
        on the association it opens (J.3.3.1.3 Note; PS3.7 D.3.3.4)."""

        def on_report(event: Any) -> tuple[int, None]:
            self.reports.append(
                (event.assoc.requestor.ae_title.strip(), event.assoc.acceptor.ae_title.strip(),
                 int(event.event_type), event.event_information)
            )  # fmt: skip
            self.arrived.set()
            return 0x0000, None

        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        server = ae.start_server(
            ("127.0.0.1", self.listen_port), block=False,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
        )  # fmt: skip
        try:
            yield
        finally:
            server.shutdown()


@dataclass
class World:
    server: Server
    dimse_port: int
    stored: list[DicomFile]
    modality: Modality

    @property
    def data_dir(self) -> Path:
        return self.server.data_dir

    def restart(self) -> None:
        """SIGKILL (nothing is flushed or put back) and start again on the same folder."""
        self.server.kill()
        self.server = start_server(self.data_dir, env=self.server.env)


@pytest.fixture
def world(
    request: pytest.FixtureRequest, tmp_path: Path, ct_series: list[DicomFile]
) -> Iterator[World]:
    """A nubis with two objects stored and the modality in its peer table, listener down."""
    need_dcmtk("storescu")
    dimse_port, listen_port = free_port(), free_port()
    settings = getattr(request, "param", {})
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # The peer goes in before the server starts: the table lives in the index.
    _nubis(data_dir, "dimse", "peers", "add", "MODALITY", "127.0.0.1", str(listen_port))
    server = start_server(data_dir, env=_env(dimse_port, **settings))
    world = World(
        server, dimse_port, ct_series[:2], Modality("MODALITY", listen_port, [], threading.Event())
    )
    try:
        run(["storescu", "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1", str(dimse_port),
             *(str(f.path) for f in world.stored)])  # fmt: skip
        yield world
    finally:
        world.server.stop()


def _commit_and_fail_once(world: World, transaction_uid: str) -> None:
    """Ask for commitment of the stored objects and one never stored; wait until the first
    attempt has failed against the modality's closed port and the job waits for the next."""
    refs = [(f.sop_class_uid, f.sop_uid) for f in world.stored]
    world.modality.request(world.dimse_port, transaction_uid, [*refs, (refs[0][0], MISSING)])

    def failed_once() -> bool:
        state, attempts, _ = _job(world.data_dir)
        return state == "queued" and attempts >= 1

    # Refused at the closed port; or, had the first attempt found the N-ACTION's association
    # still being released, answered with a failure by the SCU, which binds no handler there,
    # or ignored by it: nubis then waits out dimse_response_seconds before a new association.
    _wait(failed_once, "a failed first attempt", timeout=_REPORT_TIMEOUT + 15)
    error = _job(world.data_dir)[2]
    assert error is not None and "MODALITY" in error, error
    assert not world.modality.arrived.is_set()


def _check_delivered(world: World, transaction_uid: str) -> None:
    """The report the modality got (J.3.3.1.2), the job as ``nubis jobs list`` shows it, and
    the audit record of the delivery."""
    ((calling, called, event_type, report),) = world.modality.reports
    assert (calling, called, event_type) == (NUBIS_AE, "MODALITY", 2)  # 2: failures exist
    assert report.TransactionUID == transaction_uid
    assert sorted(i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence) == sorted(
        f.sop_uid for f in world.stored
    )
    failed = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.FailureReason)
              for i in report.FailedSOPSequence]  # fmt: skip
    assert failed == [(world.stored[0].sop_class_uid, MISSING, 0x0112)]  # no such instance

    listed = json.loads(
        _nubis(world.data_dir, "jobs", "list", "--json", "--kind", "commitment-report")
    )
    (job,) = listed
    assert job["state"] == "done" and job["attempts"] >= 2, job
    assert job["params"]["transaction_uid"] == transaction_uid
    assert job["params"]["calling_ae"] == "MODALITY"
    assert job["result"]["association"] == "a new"
    assert "MODALITY" in job["last_error"]  # why the attempt before failed

    (record,) = _commitment_records(world.data_dir, "MODALITY")
    assert record["event_id"]["code"] == "110103" and record["outcome"] == 0
    assert (
        f"storage commitment {transaction_uid} reported to MODALITY"
        in (record["outcome_description"])
    )
    studies = {o["id"] for o in record["objects"] if o["id_type"]["code"] == "110180"}
    assert studies == {world.stored[0].study_uid}


def test_report_is_retried_until_the_listener_is_up(world: World) -> None:
    """The first report attempt finds the modality's listener down; the job is retried with
    backoff, and once the listener is up (same AE title and port from the peer table) the
    report arrives on a new association, with no restart."""
    transaction_uid = "1.2.826.0.1.3680043.10.1.51"
    _commit_and_fail_once(world, transaction_uid)
    with world.modality.listening():
        assert world.modality.arrived.wait(30), "no N-EVENT-REPORT after the listener came up"
    _check_delivered(world, transaction_uid)


def test_report_survives_a_restart(world: World) -> None:
    """nubis is killed after the failed attempt and started again; only then does the
    listener come up, and the report, kept in the index, still arrives."""
    transaction_uid = "1.2.826.0.1.3680043.10.1.52"
    _commit_and_fail_once(world, transaction_uid)
    world.restart()
    with world.modality.listening():
        assert world.modality.arrived.wait(30), "no N-EVENT-REPORT after the restart"
    _check_delivered(world, transaction_uid)


# The give-up time leaves a first attempt that waited out _REPORT_TIMEOUT room for a second.
@pytest.mark.parametrize("world", [{"dimse_commitment_give_up_seconds": 5}], indirect=True)
def test_report_is_given_up_with_an_error_and_an_audit_record(world: World) -> None:
    """A modality that never listens: after dimse_commitment_give_up_seconds the report is
    dropped, the job failed for good, with an ERROR in the log and an audit record."""
    transaction_uid = "1.2.826.0.1.3680043.10.1.53"
    _commit_and_fail_once(world, transaction_uid)
    _wait(lambda: _job(world.data_dir)[0] == "failed", "the give-up")
    _, attempts, error = _job(world.data_dir)
    assert error == f"given up after {attempts} attempt(s): cannot associate with " + (
        f"MODALITY@127.0.0.1:{world.modality.listen_port}"
    )
    assert attempts >= 2
    assert any(
        "ERROR" in line and f"storage commitment {transaction_uid}" in line and "given up" in line
        for line in world.server.log().splitlines()
    ), world.server.log()[-3000:]
    (record,) = _commitment_records(world.data_dir, "MODALITY")
    assert record["event_id"]["code"] == "110103" and record["outcome"] == 8  # serious failure
    assert "given up after" in record["outcome_description"]
    with world.modality.listening():
        time.sleep(2)  # longer than the retry delay: a report still pending would come now
    assert world.modality.reports == []
