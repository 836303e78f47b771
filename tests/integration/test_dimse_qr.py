"""Query/Retrieve SCP (PS3.4 C), storage commitment (PS3.4 J) and access control per AE, with
dcmtk's findscu, movescu (to a storescp), getscu and a pynetdicom SCU."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from integration import AUTH, CT_PATIENT, MR_PATIENT, DicomFile
from integration.cli import nubis_cli
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import (
    Dimse,
    dataset_bytes,
    findscu,
    free_port,
    need_dcmtk,
    run,
    sent_by_dcmtk,
    wait_listening,
)
from integration.server import blob_path, index_rows, multipart_content_type, read_blob


def nubis(*args: str) -> subprocess.CompletedProcess[str]:
    return nubis_cli(*args, check=True)


@pytest.fixture(scope="module")
def dimse(server_factory, ct_series, mr_series) -> Iterator[Dimse]:  # type: ignore[no-untyped-def]
    need_dcmtk("findscu", "movescu", "getscu", "storescp", "storescu", "dcmsend")
    port = free_port()
    server = server_factory("dimse-qr", "--dimse-port", str(port))
    d = Dimse(server, port)
    files = [str(f.path) for f in [*ct_series, *mr_series]]
    run(["storescu", "-aet", "LOADER", "-aec", NUBIS_AE, "127.0.0.1", str(port), *files])
    yield d


def qido(d: Dimse, path: str, params: dict[str, str]) -> list[dict]:  # type: ignore[type-arg]
    r = httpx.get(f"{d.http}{path}", params=params, timeout=30, headers=AUTH)
    return r.json() if r.status_code == 200 else []


@pytest.mark.parametrize(
    ("level", "keys", "path", "params", "uid"),
    [
        ("STUDY", [f"PatientID={CT_PATIENT.patient_id}"], "/studies",
         {"PatientID": CT_PATIENT.patient_id}, "StudyInstanceUID"),
        ("STUDY", ["PatientName=tanaka*"], "/studies", {"PatientName": "tanaka*"},
         "StudyInstanceUID"),
        ("STUDY", ["StudyDate=20240101-20241231", "ModalitiesInStudy=MR"], "/studies",
         {"StudyDate": "20240101-20241231", "ModalitiesInStudy": "MR"}, "StudyInstanceUID"),
        ("SERIES", ["Modality=CT"], "/series", {"Modality": "CT"}, "SeriesInstanceUID"),
        ("IMAGE", ["InstanceNumber=3"], "/instances", {"InstanceNumber": "3"},
         "SOPInstanceUID"),
    ],
)  # fmt: skip
def test_findscu_matches_qido(
    dimse: Dimse, tmp_path: Path, level: str, keys: list[str], path: str, params, uid: str
) -> None:
    """findscu at each level (PS3.4 C.4.1, C.2.2.2 matching) finds exactly what QIDO-RS finds
    for the same query, with the same values for the keys asked."""
    named = {k.split("=")[0] for k in keys}
    # A key given twice to findscu keeps the last value: add return keys only once.
    asked = [*keys, *(k for k in dict.fromkeys((uid, "PatientID", "StudyInstanceUID"))
                      if k not in named)]  # fmt: skip
    found = findscu(dimse.port, level, asked, tmp_path)
    expected = qido(dimse, path, params)
    assert found, "no match"
    assert sorted(str(ds[uid].value) for ds in found) == sorted(
        e[f"{pydicom.datadict.tag_for_keyword(uid):08X}"]["Value"][0] for e in expected
    )
    for ds in found:
        assert ds.QueryRetrieveLevel == level
        assert str(ds.PatientID) in (CT_PATIENT.patient_id, MR_PATIENT.patient_id)


QUINN = "QUINN-12"


@pytest.fixture(scope="module")
def quinn_studies(dimse: Dimse, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Twelve studies of DUBOIS^QUINN, all of 1997-04-24 (no other study here has that date),
    stored with storescu; their Study Instance UIDs."""
    from nubis.tools import synth

    patient = synth.PatientSpec(QUINN, "DUBOIS^QUINN", "19510203", "M")
    folder = tmp_path_factory.mktemp("quinn")
    paths = [
        path
        for n in range(12)
        for path in synth.make_mr_series(
            folder / str(n), n_instances=1, rows=16, columns=16, patient=patient,
            study_date="19970424", accession=f"ACC-Q{n:02d}", seed=100 + n,
        )
    ]  # fmt: skip
    run(["storescu", "-aet", "LOADER", "-aec", NUBIS_AE, "127.0.0.1", str(dimse.port),
         *map(str, paths)])  # fmt: skip
    return sorted({str(pydicom.dcmread(p).StudyInstanceUID) for p in paths})


def _qido_studies(d: Dimse, key: str, value: str) -> tuple[int, list[str]]:
    r = httpx.get(f"{d.http}/studies", params={key: value}, timeout=30, headers=AUTH)
    if r.status_code != 200:
        return r.status_code, []
    return 200, sorted(item["0020000D"]["Value"][0] for item in r.json())


def _findscu_studies(d: Dimse, key: str, value: str, out: Path) -> tuple[int, list[str]]:
    """Final C-FIND status and the Study Instance UIDs of the Pending responses."""
    out.mkdir(parents=True)
    done = run(["findscu", "-S", "-d", "-aet", "TEST", "-aec", NUBIS_AE, "-X", "-od", str(out),
                "127.0.0.1", str(d.port), "-k", "QueryRetrieveLevel=STUDY",
                "-k", f"{key}={value}", "-k", "StudyInstanceUID"], check=False)  # fmt: skip
    status, _ = _final_status(done.stdout + done.stderr, "Received Final Find Response")
    found = sorted(str(pydicom.dcmread(p).StudyInstanceUID) for p in out.glob("rsp*.dcm"))
    return status, found


@pytest.mark.parametrize(
    "name",
    ["DUBOIS^QUINN^^^", "?UBOIS^QUINN", "?UBOIS^QUINN^^^", "dubois^qu*^^", "D*S^QUINN^^^^="],
)
def test_person_name_trailing_empty_components(
    dimse: Dimse, quinn_studies: list[str], tmp_path: Path, name: str
) -> None:
    """Trailing empty components and component groups of a PN are insignificant (PS3.5 6.2):
    a wildcard key (PS3.4 C.2.2.2.4) with them finds what the same key without them finds, as
    a single value key does (C.2.2.2.1), through QIDO-RS and C-FIND alike: all 12 studies."""
    need_dcmtk("findscu")
    assert _qido_studies(dimse, "PatientName", name) == (200, quinn_studies)
    assert _findscu_studies(dimse, "PatientName", name, tmp_path / "find") == (0, quinn_studies)


@pytest.mark.parametrize(
    "date", ["19970424", "1997.04.24", "1997.04.01-1997.04.30", "1997.04.24-19970424"]
)
def test_dates_in_the_retired_dotted_form(
    dimse: Dimse, quinn_studies: list[str], tmp_path: Path, date: str
) -> None:
    """Date keys in the ACR-NEMA form YYYY.MM.DD, which old systems still send and which PS3.5
    6.2 (DA, Note) recommends reading, single and in ranges (PS3.4 C.2.2.2.5): through QIDO-RS
    and C-FIND they find what YYYYMMDD finds, the 12 studies of 1997-04-24."""
    need_dcmtk("findscu")
    assert _qido_studies(dimse, "StudyDate", date) == (200, quinn_studies)
    assert _findscu_studies(dimse, "StudyDate", date, tmp_path / "find") == (0, quinn_studies)


@pytest.mark.parametrize(
    "date", ["1997.04.31", "97.04.24", "1997.4.24", "1997-04-24", "1997/04/24"]
)
def test_malformed_dates_are_still_refused(dimse: Dimse, tmp_path: Path, date: str) -> None:
    """Leniency stops at the dotted form: anything else that is no date is a malformed key,
    HTTP 400 and C-FIND 0xA900 Identifier does not match SOP Class (PS3.4 C.4.1.1.4)."""
    need_dcmtk("findscu")
    assert _qido_studies(dimse, "StudyDate", date) == (400, [])
    assert _findscu_studies(dimse, "StudyDate", date, tmp_path / "find") == (0xA900, [])


def test_patient_level_patient_root(dimse: Dimse, tmp_path: Path) -> None:
    """Patient Root PATIENT level (PS3.4 C.6.1.1.2): one response per patient, with Number of
    Patient Related Studies/Instances computed."""
    found = findscu(
        dimse.port, "PATIENT",
        [f"PatientID={MR_PATIENT.patient_id}", "PatientName", "NumberOfPatientRelatedStudies",
         "NumberOfPatientRelatedInstances"],
        tmp_path, model="-P",
    )  # fmt: skip
    assert len(found) == 1
    assert str(found[0].PatientName) == MR_PATIENT.patient_name
    assert int(found[0].NumberOfPatientRelatedStudies) == 1
    assert int(found[0].NumberOfPatientRelatedInstances) == 8


def test_movescu_to_storescp(dimse: Dimse, tmp_path: Path, mr_series: list[DicomFile]) -> None:
    """C-MOVE (PS3.4 C.4.2) to a destination of the peer table: movescu asks, storescp receives
    every object of the study; an unknown destination is 0xA801."""
    port = free_port()
    nubis("dimse", "peers", "add", "RECEIVER", "127.0.0.1", str(port),
          "--data-dir", str(dimse.data_dir))  # fmt: skip
    out = tmp_path / "received"
    out.mkdir()
    receiver = subprocess.Popen(
        ["storescp", "-aet", "RECEIVER", "+xa", "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port)
        study = mr_series[0].study_uid
        run(["movescu", "-S", "-aet", "MOVER", "-aec", NUBIS_AE, "-aem", "RECEIVER",
             "127.0.0.1", str(dimse.port), "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={study}"])  # fmt: skip
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in out.iterdir()}
    assert got == {f.sop_uid for f in mr_series}

    from nubis.dimse import scu

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study
    result = scu.move(scu.Remote("127.0.0.1", dimse.port, NUBIS_AE, "MOVER"), ds, "NOWHERE")
    assert result.status == 0xA801


def test_move_to_unreachable_destination(dimse: Dimse, mr_series: list[DicomFile]) -> None:
    """A C-MOVE to a destination of the peer table that cannot be associated with fails with
    0xA702 Refused: Out of Resources - Unable to perform sub-operations (PS3.4 C.4.2.1.5, Table
    C.4-2), not 0xA801 (the destination is known), and an Error Comment (0000,0902; PS3.7
    C.4.2.1.2) naming the destination and why: nothing listens on its port, or its AE rejected
    the association. No sub-operation is counted, as none was performed (C.4.2.1.7-9)."""
    need_dcmtk("movescu")
    closed_port, picky_port = free_port(), free_port()
    for name, port in (("DOWN", closed_port), ("PICKY", picky_port)):
        nubis("dimse", "peers", "add", name, "127.0.0.1", str(port),
              "--data-dir", str(dimse.data_dir))  # fmt: skip
    # An AE that answers only to another called AE title: it rejects nubis's association.
    picky = AE(ae_title="NOT-PICKY")
    picky.require_called_aet = True
    picky.add_supported_context(mr_series[0].sop_class_uid)
    listener = picky.start_server(("127.0.0.1", picky_port), block=False)
    study = mr_series[0].study_uid
    try:
        for destination, why in (("DOWN", "unreachable"), ("PICKY", "rejected")):
            move = run(["movescu", "-S", "-d", "-aet", "MOVER", "-aec", NUBIS_AE, "-aem",
                        destination, "127.0.0.1", str(dimse.port), "-k",
                        "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"],
                       check=False)  # fmt: skip
            status, response = _final_status(move.stdout + move.stderr, "Final Move Response")
            assert status == 0xA702, (destination, response[:2000])
            comment = re.search(r"\(0000,0902\) LO \[(.*)\]", response)  # the Status Detail
            assert comment, response[:2000]
            assert destination in comment.group(1) and why in comment.group(1), comment.group(1)
            assert re.search(r"Completed Suboperations\s*:\s*0\b", response), response[:2000]
    finally:
        listener.shutdown()


def test_getscu(dimse: Dimse, tmp_path: Path, ct_series: list[DicomFile]) -> None:
    """C-GET (PS3.4 C.4.3) at SERIES level: the objects come back on the same association,
    with Pending responses counting the sub-operations."""
    run(["getscu", "-S", "-aet", "GETTER", "-aec", NUBIS_AE, "-od", str(tmp_path),
         "127.0.0.1", str(dimse.port), "-k", "QueryRetrieveLevel=SERIES",
         "-k", f"StudyInstanceUID={ct_series[0].study_uid}",
         "-k", f"SeriesInstanceUID={ct_series[0].series_uid}"])  # fmt: skip
    got = {str(pydicom.dcmread(p).SOPInstanceUID) for p in tmp_path.iterdir()}
    assert got == {f.sop_uid for f in ct_series}


def test_storage_commitment(dimse: Dimse, ct_series: list[DicomFile]) -> None:
    """Storage Commitment Push Model (PS3.4 J.3): N-ACTION answered, then an N-EVENT-REPORT
    committing only objects that are stored and whose SHA-256 verifies; an unknown object is
    0x0112 and a corrupted one 0x0110 (event type 2, J.3.3.1)."""
    good, corrupt = ct_series[0], ct_series[1]
    row = {r.sop_instance_uid: r for r in index_rows(dimse.data_dir)}[corrupt.sop_uid]
    path = blob_path(dimse.data_dir, row.blob_key)
    original = path.read_bytes()
    reports: list[Dataset] = []
    done = threading.Event()

    def on_report(event) -> tuple[int, None]:  # type: ignore[no-untyped-def]
        reports.append(event.event_information)
        done.set()
        return 0x0000, None

    ae = AE(ae_title="COMMITTER")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate(
        "127.0.0.1", dimse.port, ae_title=NUBIS_AE,
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)],
    )  # fmt: skip
    assert assoc.is_established
    request = Dataset()
    request.TransactionUID = "1.2.826.0.1.3680043.10.1.42"
    refs = []
    for cls, uid in ((good.sop_class_uid, good.sop_uid), (corrupt.sop_class_uid, corrupt.sop_uid),
                     (good.sop_class_uid, "1.2.826.0.1.3680043.10.1.404")):  # fmt: skip
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
        refs.append(item)
    request.ReferencedSOPSequence = refs
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        status, _ = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assert status.Status == 0x0000
        assert done.wait(30), "no N-EVENT-REPORT"
        # The handler has returned by now, but its N-EVENT-REPORT-RSP may still be on its way;
        # releasing before it leaves would stall the SCP waiting for it.
        time.sleep(0.5)
    finally:
        path.write_bytes(original)
        assoc.release()
    report = reports[0]
    assert report.TransactionUID == request.TransactionUID
    assert [i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence] == [good.sop_uid]
    failed = {i.ReferencedSOPInstanceUID: i.FailureReason for i in report.FailedSOPSequence}
    assert failed == {corrupt.sop_uid: 0x0110, "1.2.826.0.1.3680043.10.1.404": 0x0112}


def test_storage_commitment_report_on_a_new_association(
    dimse: Dimse, ct_series: list[DicomFile]
) -> None:
    """PS3.4 J.3.3: the SCU releases its association right after the N-ACTION response, so
    the SCP reports on an association of its own: it calls the SCU's AE (from the peer table)
    proposing the SCP role for itself (SCP/SCU Role Selection, PS3.7 D.3.3.4), and the
    SCU's listening AE gets the N-EVENT-REPORT there: event type 2 (J.3.3.1) with the
    committed objects in Referenced SOP Sequence and the object never stored in Failed SOP
    Sequence with Failure Reason 0x0112 "no such object instance" (PS3.3 C.14.1.1)."""
    port = free_port()
    nubis("dimse", "peers", "add", "COMMITTER2", "127.0.0.1", str(port),
          "--data-dir", str(dimse.data_dir))  # fmt: skip
    reports: list[tuple[str, str, int, Dataset]] = []
    on_first_association: list[Dataset] = []
    arrived = threading.Event()

    def on_report(event) -> tuple[int, None]:  # type: ignore[no-untyped-def]
        requestor = event.assoc.requestor
        reports.append((requestor.ae_title.strip(), event.assoc.acceptor.ae_title.strip(),
                        int(event.event_type), event.event_information))  # fmt: skip
        arrived.set()
        return 0x0000, None

    def on_report_too_soon(event) -> tuple[int, None]:  # type: ignore[no-untyped-def]
        on_first_association.append(event.event_information)
        return 0x0000, None

    listening = AE(ae_title="COMMITTER2")
    # Accept the caller's proposal to be the SCP of Storage Commitment on this association.
    listening.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
    listener = listening.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    missing = "1.2.826.0.1.3680043.10.1.405"
    request = Dataset()
    request.TransactionUID = "1.2.826.0.1.3680043.10.1.43"
    refs = []
    # Every object of the series: verifying them all takes far longer than the release.
    for cls, uid in [*((f.sop_class_uid, f.sop_uid) for f in ct_series),
                     (ct_series[0].sop_class_uid, missing)]:  # fmt: skip
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = cls, uid
        refs.append(item)
    request.ReferencedSOPSequence = refs
    try:
        ae = AE(ae_title="COMMITTER2")
        ae.add_requested_context(StorageCommitmentPushModel)
        assoc = ae.associate(
            "127.0.0.1", dimse.port, ae_title=NUBIS_AE,
            evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report_too_soon)],
        )  # fmt: skip
        assert assoc.is_established
        status, _ = assoc.send_n_action(
            request, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1"
        )
        assoc.release()
        assert status.Status == 0x0000
        assert arrived.wait(60), "no N-EVENT-REPORT on a new association"
    finally:
        listener.shutdown()
    assert on_first_association == []
    ((calling, called, event_type, report),) = reports
    assert (calling, called, event_type) == (NUBIS_AE, "COMMITTER2", 2)
    assert report.TransactionUID == request.TransactionUID
    assert sorted(i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence) == sorted(
        f.sop_uid for f in ct_series
    )
    failed = [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID, i.FailureReason)
              for i in report.FailedSOPSequence]  # fmt: skip
    assert failed == [(ct_series[0].sop_class_uid, missing, 0x0112)]
    assert report.RetrieveAETitle == NUBIS_AE


def test_access_control(server_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Access per AE: with unknown callers refused, echoscu gets an A-ASSOCIATE-RJ (calling AE
    title not recognized, PS3.8 9.3.4); a peer added with the CLI is admitted without a
    restart; a peer bound to another host is refused; a peer without query rights gets 0x0124
    (PS3.7 C.4.2, not authorized) for C-FIND."""
    port = free_port()
    server = server_factory(
        "dimse-acl", "--dimse-port", str(port), "--set", "dimse_unknown_callers=refuse"
    )
    echo = ["echoscu", "-aet", "CALLER", "-aec", NUBIS_AE, "127.0.0.1", str(port)]
    refused = run(echo, check=False)
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    data_dir = str(server.data_dir)
    nubis("dimse", "peers", "add", "CALLER", "127.0.0.1", "--no-query", "--data-dir", data_dir)
    run(echo)
    nubis("dimse", "peers", "add", "ELSEWHERE", "127.0.0.2", "--data-dir", data_dir)
    elsewhere = run([*echo[:2], "ELSEWHERE", *echo[3:]], check=False)
    assert elsewhere.returncode != 0

    from nubis.dimse import scu

    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = ""
    with pytest.raises(scu.DimseError, match="0x0124"):
        list(scu.find(scu.Remote("127.0.0.1", port, NUBIS_AE, "CALLER"), ds))


def test_called_ae_title(dimse: Dimse, server_factory) -> None:  # type: ignore[no-untyped-def]
    """The Called AE Title must be the archive's ae_title: another one is an A-ASSOCIATE-RJ,
    rejected-permanent by the service user with reason called-AE-title-not-recognized (PS3.8
    7.1.1.3, 9.3.4: result 1, source 1, reason 7). Setting dimse_accept_any_called_ae admits
    any called AE title, for callers configured with a wrong one."""
    need_dcmtk("echoscu")
    echo = ["echoscu", "-aet", "CALLER", "127.0.0.1", str(dimse.port)]
    run([*echo, "-aec", NUBIS_AE])
    for wrong in ("ANY-SCP", "nubis", "PACS"):
        refused = run([*echo, "-aec", wrong], check=False)
        assert refused.returncode != 0, wrong
        assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr, wrong

    port = free_port()
    server_factory(
        "dimse-any-called", "--dimse-port", str(port), "--set", "dimse_accept_any_called_ae=true"
    )
    run(["echoscu", "-aet", "CALLER", "-aec", "ANY-SCP", "127.0.0.1", str(port)])


def _final_status(out: str, final: str) -> tuple[int, str]:
    """The DIMSE status of the last response a dcmtk SCU dumped (-d) after ``final``, and
    that response."""
    response = out[out.rindex(final) :]
    match = re.search(r"DIMSE Status\s*:\s*0x([0-9a-f]{4})", response, re.IGNORECASE)
    assert match, response[:2000]
    return int(match.group(1), 16), response


def test_refusals(server_factory, tmp_path: Path, ct_series: list[DicomFile]) -> None:  # type: ignore[no-untyped-def]
    """Refused requests answer the standard statuses, checked with movescu, getscu, findscu:

    - C-MOVE / C-GET by an AE the peer table does not let retrieve, and by an AE whose role
      may not read (``dimse_principals`` = modality): 0x0124 Refused: Not authorized, the
      general status of PS3.7 Annex C (C.5) that PS3.4 C.4.2.1.5 / C.4.3.1.4 allow besides
      Tables C.4-2 / C.4-3; no sub-operation counted (C.4.2.1.7-9) and no association made
      with the destination.
    - C-MOVE to a destination not in the peer table: 0xA801 Refused: Move Destination
      unknown (Table C.4-2), kept for unknown destinations only.
    - C-FIND by an AE that may not query: 0x0124 likewise (PS3.4 C.4.1.1.4 with PS3.7 C.5).
    """
    need_dcmtk("movescu", "getscu", "findscu")
    port = free_port()
    server = server_factory(
        "dimse-refusals", "--dimse-port", str(port),
        "--set", "dimse_principals=MODALITY1=default:modality",
    )  # fmt: skip
    data_dir = str(server.data_dir)
    run(["storescu", "-aet", "LOADER", "-aec", NUBIS_AE, "127.0.0.1", str(port),
         str(ct_series[0].path)])  # fmt: skip
    receiver_port = free_port()
    nubis("dimse", "peers", "add", "RECEIVER", "127.0.0.1", str(receiver_port),
          "--data-dir", data_dir)  # fmt: skip
    nubis("dimse", "peers", "add", "NOMOVE", "127.0.0.1", "--no-retrieve", "--no-query",
          "--data-dir", data_dir)  # fmt: skip
    connections: list[str] = []
    receiver = AE(ae_title="RECEIVER")
    receiver.add_supported_context(ct_series[0].sop_class_uid)
    listener = receiver.start_server(
        ("127.0.0.1", receiver_port), block=False,
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connections.append("open"))],
    )  # fmt: skip
    study = ["-k", f"StudyInstanceUID={ct_series[0].study_uid}"]
    try:
        for caller in ("NOMOVE", "MODALITY1"):
            move = run(["movescu", "-S", "-d", "-aet", caller, "-aec", NUBIS_AE, "-aem",
                        "RECEIVER", "127.0.0.1", str(port), "-k", "QueryRetrieveLevel=STUDY",
                        *study], check=False)  # fmt: skip
            status, response = _final_status(move.stdout + move.stderr, "Final Move Response")
            assert status == 0x0124, (caller, response[:2000])
            assert re.search(r"Completed Suboperations\s*:\s*0\b", response), response[:2000]
            assert re.search(r"Failed Suboperations\s*:\s*0\b", response), response[:2000]
            get = run(["getscu", "-S", "-d", "-aet", caller, "-aec", NUBIS_AE,
                       "-od", str(tmp_path), "127.0.0.1", str(port),
                       "-k", "QueryRetrieveLevel=STUDY", *study], check=False)  # fmt: skip
            # getscu knows no 0x0124 ("Unknown Status") but shows it, and leaves the response's
            # Failed SOP Instance UID List unread (its release then complains): dcmtk 3.6.7.
            status, response = _final_status(get.stdout + get.stderr, "Received C-GET Response")
            assert status == 0x0124, (caller, response[:2000])
            assert re.search(r"Failed Suboperations\s*:\s*0\b", response), response[:2000]
        assert connections == [], "a refused C-MOVE made an association with the destination"
        assert not list(tmp_path.iterdir())

        unknown = run(["movescu", "-S", "-d", "-aet", "MOVER", "-aec", NUBIS_AE, "-aem",
                       "NOWHERE", "127.0.0.1", str(port), "-k", "QueryRetrieveLevel=STUDY",
                       *study], check=False)  # fmt: skip
        status, _ = _final_status(unknown.stdout + unknown.stderr, "Final Move Response")
        assert status == 0xA801

        find = run(["findscu", "-S", "-d", "-aet", "NOMOVE", "-aec", NUBIS_AE, "127.0.0.1",
                    str(port), "-k", "QueryRetrieveLevel=STUDY", *study], check=False)  # fmt: skip
        status, _ = _final_status(find.stdout + find.stderr, "Received Final Find Response")
        assert status == 0x0124
    finally:
        listener.shutdown()


# Retrieve identifiers that would name the whole archive, or more of it than a UID list may.
# PS3.4 C.4.2.1.4.1 / C.4.3.1.3.1 (and C.6.x.1.5): a retrieve names its entities by unique
# keys, at PATIENT level one Patient ID (Single Value Matching), at STUDY, SERIES and IMAGE
# level a UID or a List of UID Matching; never universal or wildcard matching.
HOSTILE_RETRIEVES = [
    ("study", "STUDY", {"StudyInstanceUID": "*"}),
    ("study", "STUDY", {"PatientID": "*", "StudyInstanceUID": "*"}),
    ("patient", "PATIENT", {"PatientID": "*"}),
    ("patient", "PATIENT", {"PatientID": "NUBIS*"}),
    ("patient", "PATIENT", {"PatientID": "NUBIS-CT-0?"}),
    ("study", "SERIES", {"SeriesInstanceUID": "*"}),
    ("study", "IMAGE", {"SOPInstanceUID": "*"}),
    ("study", "STUDY", {"StudyInstanceUID": "\\".join(f"1.2.{n}" for n in range(1001))}),
    ("study", "STUDY", {"PatientID": CT_PATIENT.patient_id}),  # no unique key of the level
]


@pytest.mark.parametrize(
    ("model", "level", "keys"), HOSTILE_RETRIEVES, ids=[f"h{i}" for i in range(9)]
)
def test_retrieve_of_everything_is_refused(
    dimse: Dimse, tmp_path: Path, model: str, level: str, keys: dict[str, str]
) -> None:
    """C-GET and C-MOVE with such an identifier are refused 0xA900 (Identifier does not match
    SOP Class) before any sub-operation, and C-MOVE before any association with the
    destination; the same retrieve naming one study is served."""
    from nubis.dimse import scu

    nubis("dimse", "peers", "add", "SINK", "127.0.0.1", str(free_port()),
          "--data-dir", str(dimse.data_dir))  # fmt: skip
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for name, value in keys.items():
        setattr(ds, name, value)
    remote = scu.Remote("127.0.0.1", dimse.port, NUBIS_AE, "LOWLY")
    got = scu.get(remote, ds, tmp_path / "got", model=model)
    assert (got.status, got.completed, got.failed) == (0xA900, 0, 0), got
    assert not got.received
    moved = scu.move(remote, ds, "SINK", model=model)
    assert (moved.status, moved.completed, moved.failed) == (0xA900, 0, 0), moved


def test_retrieve_by_uid_list_and_patient_id_still_works(
    dimse: Dimse, tmp_path: Path, ct_series: list[DicomFile], mr_series: list[DicomFile]
) -> None:
    """The forms the standard gives: a List of UID Matching at STUDY level, one Patient ID
    at PATIENT level (Patient Root)."""
    from nubis.dimse import scu

    remote = scu.Remote("127.0.0.1", dimse.port, NUBIS_AE, "LOWLY")
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = [ct_series[0].study_uid, mr_series[0].study_uid]
    got = scu.get(remote, ds, tmp_path / "list")
    assert got.status == 0 and got.completed == len(ct_series) + len(mr_series), got
    ds = Dataset()
    ds.QueryRetrieveLevel = "PATIENT"
    ds.PatientID = CT_PATIENT.patient_id
    got = scu.get(remote, ds, tmp_path / "patient", model="patient")
    assert got.status == 0 and got.completed == len(ct_series), got


GE_PRIVATE_CLASS = "1.2.840.113619.4.26"


def _legacy_objects(out: Path) -> list[Path]:
    """pydicom-data's color-pl.dcm (Ultrasound Image Storage (Retired)), which Orthanc could
    not send to nubis's migration receiver, and pydicom's SC_rgb.dcm as an object of Siemens's
    private CSA Non-Image class and of a GE private class; each with UIDs of its own."""
    paths = []
    for name, sop_class in (
        ("color-pl.dcm", None),
        ("SC_rgb.dcm", "1.3.12.2.1107.5.9.1"),
        ("SC_rgb.dcm", GE_PRIVATE_CLASS),
    ):
        source = get_testdata_file(name)
        assert source is not None, f"{name} is not available offline (pydicom-data)"
        ds = pydicom.dcmread(source)
        if sop_class:
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        paths.append(out / f"{len(paths)}-{name}")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_retired_and_private_storage_classes(dimse: Dimse, tmp_path: Path) -> None:
    """An archive takes every storage object (PS3.4 B.5: the SCP chooses its SOP classes):
    a retired class sent by storescu (-R: it proposes only the files' own classes) and a
    private one sent by dcmsend (storescu refuses classes it does not know) are stored, as is
    a private one sent by STOW-RS (which never checked the class, PS3.18 10.5); then they go
    back out as stored, data set for data set: C-GET to getscu (whose list has the retired
    class) and to nubis's SCU proposing the private ones, and C-MOVE to a promiscuous storescp
    (the dcmtk tools write what they receive as it came: +B)."""
    us_retired, private, stowed = _legacy_objects(tmp_path)
    run(["storescu", "-R", "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1", str(dimse.port),
         str(us_retired)])  # fmt: skip
    run(["dcmsend", "-aet", "MODALITY", "-aec", NUBIS_AE, "127.0.0.1", str(dimse.port),
         str(private)])  # fmt: skip
    boundary = "nubis-private-class"
    stow = httpx.post(
        f"{dimse.http}/studies",
        content=(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                 + stowed.read_bytes() + f"\r\n--{boundary}--\r\n".encode()),
        headers={**AUTH, "Content-Type": multipart_content_type(boundary)},
        timeout=30,
    )  # fmt: skip
    assert stow.status_code == 200, stow.text
    sent = {str(pydicom.dcmread(p).SOPInstanceUID): sent_by_dcmtk(p.read_bytes())
            for p in (us_retired, private, stowed)}  # fmt: skip
    rows = {r.sop_instance_uid: r for r in index_rows(dimse.data_dir)}
    for uid, data_set in sent.items():
        assert dataset_bytes(read_blob(dimse.data_dir, rows[uid])) == data_set

    def study(path: Path) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = pydicom.dcmread(path).StudyInstanceUID
        return ds

    got = tmp_path / "got"
    got.mkdir()
    run(["getscu", "-S", "+B", "-aet", "GETTER", "-aec", NUBIS_AE, "-od", str(got), "127.0.0.1",
         str(dimse.port), "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={study(us_retired).StudyInstanceUID}"])  # fmt: skip
    from nubis.dimse import scu

    remote = scu.Remote("127.0.0.1", dimse.port, NUBIS_AE, "GETTER")
    for path, sop_class in ((private, "1.3.12.2.1107.5.9.1"), (stowed, GE_PRIVATE_CLASS)):
        result = scu.get(remote, study(path), got, sop_classes=[sop_class])
        assert (result.status, result.completed) == (0x0000, 1)
    assert {str(pydicom.dcmread(p).SOPInstanceUID): dataset_bytes(p.read_bytes())
            for p in got.iterdir()} == sent  # fmt: skip

    port = free_port()
    nubis("dimse", "peers", "add", "KEEPER", "127.0.0.1", str(port),
          "--data-dir", str(dimse.data_dir))  # fmt: skip
    moved = tmp_path / "moved"
    moved.mkdir()
    receiver = subprocess.Popen(
        ["storescp", "-aet", "KEEPER", "-pm", "+xa", "+B", "-od", str(moved), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port)
        for path in (us_retired, private, stowed):
            assert scu.move(remote, study(path), "KEEPER").status == 0x0000
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    assert {str(pydicom.dcmread(p).SOPInstanceUID): dataset_bytes(p.read_bytes())
            for p in moved.iterdir()} == sent  # fmt: skip
