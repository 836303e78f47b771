"""C-CANCEL (PS3.7 9.3.2.3, 9.3.3.3, 9.3.4.3) of C-FIND, C-GET and C-MOVE, with dcmtk's
findscu and movescu (``--cancel N``) and, for C-GET (getscu cannot cancel), a pynetdicom SCU.

A cancelled operation ends with one final response of status 0xFE00 (PS3.4 Table C.4-1,
C.4-2, C.4-3) and nothing after it; for C-MOVE and C-GET that response carries the
sub-operation counts (C.4.2.1.6-9, C.4.3.1.6-9: Remaining may, Completed / Failed / Warning
shall be present) and the Failed SOP Instance UID List (C.4.2.1.4.2, C.4.3.1.3.2).
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)

from integration import DicomFile
from integration.cli import nubis_cli
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import Dimse, free_port, need_dcmtk, run, wait_listening
from integration.server import blob_path, index_rows
from nubis.dimse.reactor import RaceFreeAE
from nubis.tools import synth

CANCEL = 0xFE00
PENDING = 0xFF00
# Enough matches that the SCP cannot have sent them all before a C-CANCEL sent after the
# first one reaches it (a cancel after the final response is ignored, PS3.7 9.3.2.3).
MANY = 500
MANY_PATIENT = synth.PatientSpec("NUBIS-CANCEL-01", "Cancel^Many", "19700101", "O")


def _nodelay(event: Any) -> None:
    # The SCP turns Nagle off; this SCU must too, or each C-STORE waits for a delayed ACK.
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@pytest.fixture(scope="module")
def dimse(server_factory, ct_series: list[DicomFile]) -> Iterator[Dimse]:  # type: ignore[no-untyped-def]
    need_dcmtk("findscu", "movescu", "storescp", "storescu")
    port = free_port()
    server = server_factory("dimse-cancel", "--dimse-port", str(port))
    files = [str(f.path) for f in ct_series]
    run(["storescu", "-aet", "LOADER", "-aec", NUBIS_AE, "127.0.0.1", str(port), *files])
    # nubis's race-free AE: with pynetdicom's own, the association's reactor can take a fast
    # C-STORE reply away from send_c_store, which then waits out the DIMSE timeout (seen
    # under load: the fixture failed 2 runs in 3, each after 30 s).
    ae = RaceFreeAE(ae_title="LOADER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1", port, ae_title=NUBIS_AE, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    )
    assert assoc.is_established
    try:
        for ds in synth.series_datasets(
            "MR", n_instances=MANY, rows=16, columns=16, patient=MANY_PATIENT, seed=31
        ):
            assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    yield Dimse(server, port)


@pytest.fixture(scope="module")
def many_study() -> str:
    first = next(synth.series_datasets("MR", n_instances=MANY, rows=16, columns=16,
                                       patient=MANY_PATIENT, seed=31))  # fmt: skip
    return str(first.StudyInstanceUID)


def _image_query(study: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE"
    ds.StudyInstanceUID = study
    ds.SOPInstanceUID = ""
    return ds


@contextlib.contextmanager
def _cancel_once_sent(assoc: Association, msg_id: int) -> Iterator[None]:
    """Queue a C-CANCEL the moment the request's last PDU is on the wire.

    Cancelling after the first response races the SCP, which can send all MANY matches
    before a loaded client gets round to it; sent right behind the request, the cancel is
    there long before the SCP could finish (and PS3.7 9.3.2.3 allows it at any time)."""
    cx = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelFind, "", "scu")
    sent = False

    def on_pdu_sent(event: Any) -> None:
        nonlocal sent
        if sent or not isinstance(event.pdu, P_DATA_TF):
            return
        control = event.pdu.presentation_data_value_items[-1].presentation_data_value[0]
        if control & 0x03 == 0x02:  # the last fragment of a data set (PS3.8 E.2)
            sent = True
            assoc.send_c_cancel(msg_id, cx.context_id)

    assoc.bind(evt.EVT_PDU_SENT, on_pdu_sent)
    try:
        yield
    finally:
        assoc.unbind(evt.EVT_PDU_SENT, on_pdu_sent)


def test_findscu_cancel(dimse: Dimse, many_study: str) -> None:
    """findscu --cancel 1 (PS3.4 C.4.1.2.3 / PS3.7 9.3.2.3): the SCP stops matching and the
    final response is 0xFE00 "matching terminated due to cancel", well before all matches.

    findscu sends its cancel only once the first response is in, so a client that the machine
    leaves unscheduled for long enough sees the query end first (a late cancel is ignored,
    PS3.7 9.3.2.3). Three tries: an SCP that ignored cancels fails all of them."""
    outcomes = []
    for _ in range(3):
        proc = run(["findscu", "-S", "-v", "-aet", "CANCELLER", "-aec", NUBIS_AE, "--cancel", "1",
                    "127.0.0.1", str(dimse.port), "-k", "QueryRetrieveLevel=IMAGE",
                    "-k", f"StudyInstanceUID={many_study}", "-k", "SOPInstanceUID"])  # fmt: skip
        out = proc.stdout + proc.stderr
        assert "Sending Cancel Request" in out, out[-2000:]
        finals = re.findall(r"Received Final Find Response \(([^)]*)\)", out)
        outcomes.append(finals)
        if finals == ["Cancel: MatchingTerminatedDueToCancelRequest"]:
            pending = re.findall(r"Find Response: \d+ \(Pending\)", out)
            # Responses already on the wire when the cancel arrived still come; no more after.
            assert 1 <= len(pending) < MANY, len(pending)
            assert out.rindex("Find Response: ") < out.index("Received Final Find Response")
            return
    raise AssertionError(f"no findscu cancel took effect: {outcomes}")


def test_find_cancel_status_and_nothing_after(dimse: Dimse, many_study: str) -> None:
    """The same with a pynetdicom SCU, which shows the status code: the final C-FIND-RSP is
    exactly 0xFE00 with no identifier (PS3.4 C.4.1.1.4), and no response follows it. The
    cancel comes right behind the request, before the SCP has started matching: it still
    counts (pynetdicom's own SCP drops such a cancel and runs to the end)."""
    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    try:
        statuses: list[int] = []
        final_identifier: Dataset | None = None
        with _cancel_once_sent(assoc, 7):
            for status, identifier in assoc.send_c_find(
                _image_query(many_study), StudyRootQueryRetrieveInformationModelFind, msg_id=7
            ):
                statuses.append(int(status.Status))
                if status.Status != PENDING:
                    final_identifier = identifier
        assert statuses[-1] == CANCEL, [hex(s) for s in statuses[-3:]]
        assert all(s == PENDING for s in statuses[:-1])
        assert len(statuses) - 1 < MANY
        assert final_identifier is None
        # The association is still usable: the next query runs to its end.
        rest = [int(s.Status) for s, _ in assoc.send_c_find(
            _image_query(many_study), StudyRootQueryRetrieveInformationModelFind)]  # fmt: skip
        assert rest[-1] == 0x0000 and len(rest) == MANY + 1
    finally:
        assoc.release()


def test_late_cancels_are_ignored(
    dimse: Dimse, ct_series: list[DicomFile], many_study: str
) -> None:
    """A C-CANCEL that arrives after the final response is ignored (PS3.7 9.3.2.3): it neither
    disturbs the association nor cancels a later operation; eleven of them (pynetdicom keeps
    at most ten pending per association) still leave a later cancel working."""
    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", dimse.port, ae_title=NUBIS_AE)
    assert assoc.is_established
    cx = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelFind, "", "scu")
    study = ct_series[0].study_uid
    try:
        for msg_id in range(1, 12):
            done = [int(s.Status) for s, _ in assoc.send_c_find(
                _image_query(study), StudyRootQueryRetrieveInformationModelFind,
                msg_id=msg_id)]  # fmt: skip
            assert done[-1] == 0x0000
            assoc.send_c_cancel(msg_id, cx.context_id)
        time.sleep(0.2)  # let the late cancels arrive before the next request
        with _cancel_once_sent(assoc, 100):
            statuses = [int(s.Status) for s, _ in assoc.send_c_find(
                _image_query(many_study), StudyRootQueryRetrieveInformationModelFind,
                msg_id=100)]  # fmt: skip
        assert statuses[-1] == CANCEL, [hex(s) for s in statuses]
        assert assoc.is_established
    finally:
        assoc.release()


def _movescu_counts(out: str) -> dict[str, int]:
    """The sub-operation counts of the last C-MOVE-RSP movescu dumped (-d)."""
    counts = {}
    for name in ("Remaining", "Completed", "Failed", "Warning"):
        found = re.findall(rf"{name} Suboperations\s*:\s*(\d+)", out)
        if found:
            counts[name] = int(found[-1])
    return counts


def test_movescu_cancel(dimse: Dimse, tmp_path: Path, many_study: str) -> None:
    """movescu --cancel 1 (PS3.4 C.4.2.2, PS3.7 9.3.4.3): the SCP stops the C-STORE
    sub-operations and answers 0xFE00 with Completed / Failed / Warning (and Remaining) that
    add up to the study and an (empty) Failed SOP Instance UID List, and the destination got
    exactly the completed objects."""
    port = free_port()
    nubis_cli("dimse", "peers", "add", "RECEIVER", "127.0.0.1", str(port),
              "--data-dir", str(dimse.data_dir), check=True)  # fmt: skip
    out_dir = tmp_path / "received"
    out_dir.mkdir()
    receiver = subprocess.Popen(
        ["storescp", "-aet", "RECEIVER", "-od", str(out_dir), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port)
        proc = run(["movescu", "-S", "-d", "-aet", "MOVER", "-aec", NUBIS_AE, "-aem", "RECEIVER",
                    "--cancel", "1", "127.0.0.1", str(dimse.port),
                    "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={many_study}"])  # fmt: skip
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    out = proc.stdout + proc.stderr
    assert "Sending Cancel Request" in out, out[-3000:]
    final = out[out.index("Received Final Move Response") :]
    assert re.search(r"DIMSE Status\s*:\s*0xfe00", final, re.IGNORECASE), final
    assert "FailedSOPInstanceUIDList" in final, final  # present, empty: nothing failed
    counts = _movescu_counts(final)
    received = [pydicom.dcmread(p) for p in out_dir.iterdir()]
    assert counts["Failed"] == 0 and counts["Warning"] == 0, counts
    assert counts["Completed"] == len(received) >= 1, (counts, len(received))
    assert counts["Completed"] + counts.get("Remaining", 0) == MANY, counts
    assert counts["Completed"] < MANY, "the cancel came too late to stop anything"


def test_get_cancel_counts_and_failed_list(dimse: Dimse, ct_series: list[DicomFile]) -> None:
    """C-GET cancelled after three responses (PS3.4 C.4.3.2, PS3.7 9.3.3.3; getscu cannot
    cancel, so a pynetdicom SCU): the final response is 0xFE00 with Remaining, Completed,
    Failed and Warning counts that add up (C.4.3.1.6-9), and the Failed SOP Instance UID List
    (C.4.3.1.3.2) names the one object whose sub-operation failed (its blob is corrupted)."""
    headers = sorted((f.header for f in ct_series), key=lambda h: int(h.InstanceNumber))
    first = str(headers[0].SOPInstanceUID)  # sent first (instance number order)
    row = {r.sop_instance_uid: r for r in index_rows(dimse.data_dir)}[first]
    path = blob_path(dimse.data_dir, row.blob_key)
    original = path.read_bytes()
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="CANCELLER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1", dimse.port, ae_title=NUBIS_AE,
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = ct_series[0].study_uid
    query.SeriesInstanceUID = ct_series[0].series_uid
    responses: list[tuple[Dataset, Dataset | None]] = []
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        cx = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelGet, "", "scu")
        for status, identifier in assoc.send_c_get(
            query, StudyRootQueryRetrieveInformationModelGet, msg_id=9
        ):
            responses.append((status, identifier))
            if len(responses) == 3:
                assoc.send_c_cancel(9, cx.context_id)
    finally:
        path.write_bytes(original)
        assoc.release()
    final, identifier = responses[-1]
    assert final.Status == CANCEL, hex(final.Status)
    assert all(s.Status == PENDING for s, _ in responses[:-1])
    completed = int(final.NumberOfCompletedSuboperations)
    failed = int(final.NumberOfFailedSuboperations)
    remaining = int(final.get("NumberOfRemainingSuboperations", 0))
    assert int(final.NumberOfWarningSuboperations) == 0
    assert failed == 1
    assert completed == len(received) >= 2
    assert completed + failed + remaining == len(ct_series)
    assert remaining > 0, "the cancel came too late to stop anything"
    assert identifier is not None
    failed_uids = identifier.FailedSOPInstanceUIDList
    failed_uids = [failed_uids] if isinstance(failed_uids, str) else list(failed_uids)
    assert failed_uids == [first]
    assert first not in received
