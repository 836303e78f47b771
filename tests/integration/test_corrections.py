"""Corrections of patient and study attributes (issue 12): a live ``nubis serve`` with DIMSE, read
by dicomweb-client and dcmtk, corrected through ``POST /corrections`` and ``nubis studies``.

What a correction must change is every answer a client gets about the study: QIDO-RS (PS3.18
10.6) and C-FIND (PS3.4 C.4.1) match and return the corrected values, WADO-RS metadata (PS3.18
10.4.1.1.2) and whole objects (WADO-RS 10.4.1.1.1, WADO-URI 9.1, C-GET PS3.4 C.4.3, C-MOVE
C.4.2) carry them; the stored objects stay as they were stored (their blob and SHA-256 do not
change), and an undo shows the original again. Archives encrypt at rest by default, so a study
moved to another patient is re-keyed under that patient's key (same bytes, new blobs).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from integration import AUTH
from integration.cli import nubis_cli
from integration.dimse_helpers import AE as NUBIS_AE
from integration.dimse_helpers import Dimse, findscu, free_port, need_dcmtk, run, wait_listening
from integration.server import index_rows, read_blob, wait_rekeyed
from nubis.tools import synth


@pytest.fixture(scope="module")
def dimse(server_factory) -> Iterator[Dimse]:  # type: ignore[no-untyped-def]
    need_dcmtk("findscu", "movescu", "getscu", "storescp")
    port = free_port()
    server = server_factory("corrections", "--dimse-port", str(port))
    yield Dimse(server, port)


def _client(d: Dimse) -> DICOMwebClient:
    return DICOMwebClient(url=d.http, headers=AUTH)


_seed = iter(range(7000, 8000))


def _store_study(d: Dimse, patient_id: str, name: str, n: int = 2) -> list[Dataset]:
    patient = synth.PatientSpec(patient_id, name, "19800101", "F")
    # As files (preamble and file meta), as dicomweb-client sends what it is given.
    datasets = [
        pydicom.dcmread(io.BytesIO(synth.dataset_bytes(ds)))
        for ds in synth.series_datasets(
            "CT", n_instances=n, rows=64, columns=64, seed=next(_seed), patient=patient
        )
    ]
    _client(d).store_instances(datasets)
    return datasets


def _correct(d: Dimse, body: dict[str, object], token: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(f"{d.server.url}/corrections", json=body, headers=token, timeout=30)  # type: ignore[attr-defined]


def _undo(d: Dimse, correction_id: int, reason: str = "undo in a test") -> httpx.Response:
    return httpx.post(
        f"{d.server.url}/corrections/{correction_id}/undo",  # type: ignore[attr-defined]
        json={"reason": reason},
        headers=AUTH,
        timeout=30,
    )


def _studies(d: Dimse, patient_id: str) -> set[str]:
    found = _client(d).search_for_studies(search_filters={"PatientID": patient_id})
    return {s["0020000D"]["Value"][0] for s in found}


def _blob_digests(d: Dimse, study_uid: str) -> dict[str, str]:
    wait_rekeyed(d.data_dir)
    rows = [r for r in index_rows(d.data_dir) if r.study_uid == study_uid]
    return {r.sop_instance_uid: hashlib.sha256(read_blob(d.data_dir, r)).hexdigest() for r in rows}


def nubis(*args: str) -> subprocess.CompletedProcess[str]:
    return nubis_cli(*args, check=True)


def test_dicomweb_shows_the_corrected_patient_and_undo_restores(dimse: Dimse) -> None:
    """QIDO-RS, WADO-RS metadata, WADO-RS instances and WADO-URI all show a correction's
    values (PS3.18 10.6.3 matching on the corrected Patient ID, 10.4 retrieval); the stored
    objects keep their bytes; the undo shows what was stored."""
    datasets = _store_study(dimse, "WRONG-ID-1", "Wrnog^Name")
    study = str(datasets[0].StudyInstanceUID)
    series = str(datasets[0].SeriesInstanceUID)
    sop = str(datasets[0].SOPInstanceUID)
    stored = _blob_digests(dimse, study)
    client = _client(dimse)

    answer = _correct(
        dimse,
        {
            "action": "update-study",
            "study": study,
            "set": {
                "PatientID": "RIGHT-ID-1",
                "PatientName": "Wrong^Name",
                "IssuerOfPatientID": "HOSPITAL-A",
            },
            "reason": "typed wrong at the modality",
        },
    )
    assert answer.status_code == 201, answer.text
    correction = answer.json()
    assert correction["changed"][study]["PatientID"] == {
        "before": "WRONG-ID-1",
        "after": "RIGHT-ID-1",
    }

    # QIDO-RS: the corrected ID finds the study, the old one no longer does.
    assert _studies(dimse, "RIGHT-ID-1") == {study}
    assert _studies(dimse, "WRONG-ID-1") == set()
    found = client.search_for_instances(
        study_instance_uid=study, fields=["PatientName", "IssuerOfPatientID"]
    )
    assert {i["00100010"]["Value"][0]["Alphabetic"] for i in found} == {"Wrong^Name"}
    # An attribute without a column comes from the overlay, over the stored metadata.
    assert {i["00100021"]["Value"][0] for i in found} == {"HOSPITAL-A"}
    listed = httpx.get(
        f"{dimse.server.url}/corrections",  # type: ignore[attr-defined]
        params={"study": study},
        headers=AUTH,
        timeout=30,
    ).json()["corrections"]
    assert [c["id"] for c in listed] == [correction["id"]]

    # WADO-RS metadata: every instance.
    metadata = client.retrieve_study_metadata(study)
    assert len(metadata) == 2
    assert {m["00100020"]["Value"][0] for m in metadata} == {"RIGHT-ID-1"}
    assert {m["00100010"]["Value"][0]["Alphabetic"] for m in metadata} == {"Wrong^Name"}

    # WADO-RS instance, as stored and converted: corrected, pixels untouched.
    for syntax in ("*", "1.2.840.10008.1.2.1"):
        ds = client.retrieve_instance(
            study, series, sop, media_types=(("application/dicom", syntax),)
        )
        assert ds.PatientID == "RIGHT-ID-1" and str(ds.PatientName) == "Wrong^Name"
        assert ds.PixelData == datasets[0].PixelData
    whole = client.retrieve_study(study)
    assert {str(ds.PatientID) for ds in whole} == {"RIGHT-ID-1"}

    # WADO-URI (PS3.18 9.1).
    uri = httpx.get(
        f"{dimse.server.url}/wado",  # type: ignore[attr-defined]
        params={
            "requestType": "WADO",
            "studyUID": study,
            "seriesUID": series,
            "objectUID": sop,
            "contentType": "application/dicom",
        },
        headers=AUTH,
        timeout=30,
    )
    assert uri.status_code == 200
    # No cache may keep a copy from before the correction (or the undo).
    assert uri.headers["cache-control"] == "no-store" and "etag" not in uri.headers
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(uri.content)).PatientID == "RIGHT-ID-1"

    # The stored objects were never rewritten.
    assert _blob_digests(dimse, study) == stored

    undone = _undo(dimse, correction["id"])
    assert undone.status_code == 201, undone.text
    assert undone.json()["undoes"] == correction["id"]
    assert _studies(dimse, "WRONG-ID-1") == {study}
    assert _studies(dimse, "RIGHT-ID-1") == set()
    metadata = client.retrieve_study_metadata(study)
    assert {m["00100020"]["Value"][0] for m in metadata} == {"WRONG-ID-1"}
    ds = client.retrieve_instance(study, series, sop)
    assert ds.PatientID == "WRONG-ID-1" and str(ds.PatientName) == "Wrnog^Name"
    # Undone twice: refused (409), the state stays.
    assert _undo(dimse, correction["id"]).status_code == 409


def test_dimse_finds_and_retrieves_corrected_objects(dimse: Dimse, tmp_path: Path) -> None:
    """C-FIND matches the corrected Patient ID (PS3.4 C.4.1.3.1), C-GET (C.4.3) and C-MOVE
    (C.4.2) send objects carrying it."""
    datasets = _store_study(dimse, "DIMSE-OLD", "Old^Patient")
    study = str(datasets[0].StudyInstanceUID)
    answer = _correct(
        dimse,
        {
            "action": "update-study",
            "study": study,
            "set": {"PatientID": "DIMSE-NEW", "PatientName": "New^Patient"},
            "reason": "mis-filed",
        },
    )
    assert answer.status_code == 201, answer.text

    found = findscu(
        dimse.port,
        "STUDY",
        ["PatientID=DIMSE-NEW", "StudyInstanceUID", "PatientName"],
        tmp_path / "find-new",
    )
    assert [(str(f.StudyInstanceUID), str(f.PatientName)) for f in found] == [
        (study, "New^Patient")
    ]
    assert findscu(dimse.port, "STUDY", ["PatientID=DIMSE-OLD"], tmp_path / "find-old") == []

    got = tmp_path / "get"
    got.mkdir()
    run(["getscu", "-S", "-aet", "GETTER", "-aec", NUBIS_AE, "-od", str(got),
         "127.0.0.1", str(dimse.port), "-k", "QueryRetrieveLevel=STUDY",
         "-k", f"StudyInstanceUID={study}"])  # fmt: skip
    received = [pydicom.dcmread(p) for p in got.iterdir()]
    assert len(received) == 2
    assert {(str(r.PatientID), str(r.PatientName)) for r in received} == {
        ("DIMSE-NEW", "New^Patient")
    }

    port = free_port()
    nubis("dimse", "peers", "add", "RECEIVER", "127.0.0.1", str(port),
          "--data-dir", str(dimse.data_dir))  # fmt: skip
    moved = tmp_path / "moved"
    moved.mkdir()
    receiver = subprocess.Popen(
        ["storescp", "-aet", "RECEIVER", "+xa", "-od", str(moved), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port)
        run(["movescu", "-S", "-aet", "MOVER", "-aec", NUBIS_AE, "-aem", "RECEIVER",
             "127.0.0.1", str(dimse.port), "-k", "QueryRetrieveLevel=STUDY",
             "-k", f"StudyInstanceUID={study}"])  # fmt: skip
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    received = [pydicom.dcmread(p) for p in moved.iterdir()]
    assert {str(r.PatientID) for r in received} == {"DIMSE-NEW"} and len(received) == 2


def test_merge_patients_from_the_cli_and_undo(dimse: Dimse) -> None:
    """``nubis studies merge-patients``: every study of the merged patient appears under the
    surviving Patient ID with that patient's name and birth date; history lists it; undo
    puts them back."""
    merged = [_store_study(dimse, "MERGE-GOES", "Dup^Patient", 1) for _ in range(2)]
    survivor = _store_study(dimse, "MERGE-STAYS", "Real^Patient", 1)
    merged_uids = {str(s[0].StudyInstanceUID) for s in merged}
    survivor_uid = str(survivor[0].StudyInstanceUID)
    data = str(dimse.data_dir)

    done = nubis("studies", "merge-patients", "--from", "MERGE-GOES", "--into", "MERGE-STAYS",
                 "--reason", "duplicate registration", "--data-dir", data)  # fmt: skip
    assert "merge" in done.stdout
    assert _studies(dimse, "MERGE-STAYS") == merged_uids | {survivor_uid}
    assert _studies(dimse, "MERGE-GOES") == set()
    for uid in merged_uids:
        meta = _client(dimse).retrieve_study_metadata(uid)
        assert meta[0]["00100010"]["Value"][0]["Alphabetic"] == "Real^Patient"

    history = nubis("studies", "history", "--json", "--data-dir", data).stdout
    import json

    entries = json.loads(history)
    merge = next(e for e in entries if e["kind"] == "merge")
    assert set(merge["studies"]) == merged_uids and merge["reason"] == "duplicate registration"

    nubis("studies", "undo", str(merge["id"]), "--reason", "wrong merge", "--data-dir", data)
    assert _studies(dimse, "MERGE-GOES") == merged_uids
    assert _studies(dimse, "MERGE-STAYS") == {survivor_uid}


def test_corrections_are_audited(dimse: Dimse) -> None:
    """Each correction leaves Patient Record (110110) and DICOM Instances Accessed (110103)
    records with EventActionCode U (PS3.15 A.5.3.9, A.5.3.3), naming the study, the patient
    and the reason."""
    datasets = _store_study(dimse, "AUDIT-OLD", "Audit^Me", 1)
    study = str(datasets[0].StudyInstanceUID)
    answer = _correct(
        dimse,
        {"action": "move-study", "study": study, "to_patient": "AUDIT-NEW",
         "reason": "audit reason 12"},
    )  # fmt: skip
    assert answer.status_code == 201, answer.text
    records = httpx.get(
        f"{dimse.server.url}/audit/records",  # type: ignore[attr-defined]
        params={"event": "110110", "limit": 1000},
        headers=AUTH,
        timeout=30,
    ).json()["records"]
    events = [
        r["event"]
        for r in records
        if "audit reason 12" in r["event"].get("outcome_description", "")
    ]
    assert {e["event_id"]["code"] for e in events} == {"110110"}
    assert {e["action"] for e in events} == {"U"}
    patients = {o["id"] for e in events for o in e["objects"] if o["id"].startswith("AUDIT-")}
    assert patients == {"AUDIT-OLD", "AUDIT-NEW"}, events
    accessed = httpx.get(
        f"{dimse.server.url}/audit/records",  # type: ignore[attr-defined]
        params={"event": "110103", "patient": "AUDIT-NEW", "limit": 1000},
        headers=AUTH,
        timeout=30,
    ).json()["records"]
    assert any(
        r["event"]["action"] == "U" and study in str(r["event"]["objects"]) for r in accessed
    )

    # Listing the history shows those patients' attributes: a read of their record (R).
    listed = httpx.get(
        f"{dimse.server.url}/corrections",  # type: ignore[attr-defined]
        params={"study": study},
        headers=AUTH,
        timeout=30,
    )
    assert listed.status_code == 200
    reads = httpx.get(
        f"{dimse.server.url}/audit/records",  # type: ignore[attr-defined]
        params={"event": "110110", "patient": "AUDIT-OLD", "limit": 1000},
        headers=AUTH,
        timeout=30,
    ).json()["records"]
    assert any(r["event"]["action"] == "R" and study in str(r["event"]["objects"]) for r in reads)


def test_the_api_refuses_what_it_cannot_do(dimse: Dimse) -> None:
    """A reason is required; UIDs and pixel attributes cannot be corrected; a value that does
    not fit its VR is refused naming the attribute (400); nothing changes."""
    datasets = _store_study(dimse, "REFUSE-1", "Keep^Me", 1)
    study = str(datasets[0].StudyInstanceUID)
    base = {"action": "update-study", "study": study, "reason": "r"}
    cases = [
        ({**base, "reason": " "}, "reason"),
        ({**base, "set": {"StudyInstanceUID": "1.2.3"}}, "StudyInstanceUID"),
        ({**base, "set": {"Rows": "5"}}, "Rows"),
        ({**base, "set": {"PatientID": "x" * 65}}, "PatientID"),
        ({**base, "set": {"PatientBirthDate": "1980-01-01"}}, "PatientBirthDate"),
        ({**base, "set": {"NoSuchKeyword": "a"}}, "NoSuchKeyword"),
    ]
    for body, named in cases:
        answer = _correct(dimse, body)
        assert answer.status_code == 400, (body, answer.text)
        assert named.lower() in answer.text.lower(), answer.text
    missing = _correct(dimse, {**base, "study": "1.2.3.999", "set": {"PatientID": "A"}})
    assert missing.status_code == 404
    assert _studies(dimse, "REFUSE-1") == {study}


def test_a_moved_study_is_rekeyed_and_shredded_with_its_new_patient(dimse: Dimse) -> None:
    """Objects are encrypted under the key of the Patient ID they arrived with (docs/
    security.md); a move queues the re-key of the study's objects under the new patient's key,
    which the server's job runner does at once (reads go on meanwhile). Then a crypto-shred
    follows the correction: the old patient's leaves the moved study readable, the new
    patient's makes it unreadable (410). While it is pending the shred waits for it
    (tests/unit/test_keys_cli.py)."""
    datasets = _store_study(dimse, "KEY-OLD", "Key^Old", 1)
    study, series, sop = (
        str(datasets[0].StudyInstanceUID),
        str(datasets[0].SeriesInstanceUID),
        str(datasets[0].SOPInstanceUID),
    )
    moved = _correct(
        dimse,
        {"action": "move-study", "study": study, "to_patient": "KEY-NEW", "reason": "keys"},
    )
    assert moved.status_code == 201, moved.text
    assert _client(dimse).retrieve_instance(study, series, sop).PatientID == "KEY-NEW"
    wait_rekeyed(dimse.data_dir)
    data = str(dimse.data_dir)
    nubis("keys", "shred-patient", "KEY-OLD", "--yes", "--data-dir", data)
    assert _client(dimse).retrieve_instance(study, series, sop).PatientID == "KEY-NEW"

    nubis("keys", "shred-patient", "KEY-NEW", "--yes", "--data-dir", data)
    gone = httpx.get(
        f"{dimse.http}/studies/{study}/series/{series}/instances/{sop}",
        headers={**AUTH, "Accept": 'multipart/related; type="application/dicom"'},
        timeout=30,
    )
    assert gone.status_code == 410
