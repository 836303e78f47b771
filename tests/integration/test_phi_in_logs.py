"""No patient data in the server log, at any level (issue 9 item 5; docs/security.md).

A live server logging at DEBUG is given patient data through every door that logs something:
QIDO-RS and C-FIND with malformed identifying keys (whose reasons used to quote the value) and
with good ones, STOW-RS and C-STORE of objects with patient data, good and refused, break-glass
with a reason naming the patient, reads refused by authorization, failed logins. Every value
used is a distinctive string; once the server has stopped, every line of its log (worker
processes included, uvicorn's access log included) is searched for each of them, in any case.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom import config as pydicom_config

from integration import AUTH, encode
from integration.cli import nubis_cli
from integration.dimse_helpers import AE, free_port, need_dcmtk, run
from integration.server import Server, start_server
from nubis.tools import synth

NAME, OTHER_NAME = "Qzphigiven^Qzphifamily", "Qzphiother^Qzphiguy"
PATIENT_ID, BIRTH_DATE, ACCESSION = "QZPHIPID4417", "19230917", "QZPHIACC55"
REFERRING, DESCRIPTION = "Qzphireferrer^Doc", "Qzphidescription of the study"
BAD_BIRTH, BAD_UID = "Qzphibirthday", "Qzphiuidname"
BREAK_GLASS = "unconscious patient Qzphibreakglass in resus"
PASSWORD, WRONG_PASSWORD = "correct-horse-Qzphipass", "Qzphiwrongpassword"
PATIENT = synth.PatientSpec(PATIENT_ID, NAME, BIRTH_DATE, "F")
# Every fragment that must never reach a log line (searched for case-insensitively: person
# names are folded to upper case for matching).
SECRETS = (
    "Qzphigiven", "Qzphifamily", "Qzphiother", "Qzphiguy", PATIENT_ID, BIRTH_DATE, ACCESSION,
    "Qzphireferrer", "Qzphidescription", BAD_BIRTH, BAD_UID, "Qzphibreakglass", "Qzphipass",
    WRONG_PASSWORD,
)  # fmt: skip


def _nubis(server: Server, *args: str, stdin: str = "") -> str:
    data = ("--data-dir", str(server.data_dir))
    return nubis_cli(*args, *data, input=stdin, env=server.env, check=True).stdout


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    need_dcmtk("findscu", "storescu")
    port = free_port()
    env = {"NUBIS_DIMSE_PORT": str(port), "NUBIS_DURABLE": "false"}
    server = start_server(tmp_path_factory.mktemp("phi") / "data", env=env, log_level="debug")
    try:
        yield server, port
    finally:
        server.stop()


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("phi-objects")
    good = synth.make_multiframe(
        folder / "good.dcm", frames=1, rows=16, columns=16, seed=91, patient=PATIENT
    )
    ds = pydicom.dcmread(good)
    ds.AccessionNumber, ds.ReferringPhysicianName = ACCESSION, REFERRING
    ds.StudyDescription = DESCRIPTION
    pydicom.dcmwrite(good, ds)
    by_dimse = synth.make_multiframe(
        folder / "dimse.dcm", frames=1, rows=16, columns=16, seed=92, patient=PATIENT
    )
    bad = pydicom.dcmread(good)
    with pydicom_config.disable_value_validation():
        bad.SOPInstanceUID = BAD_UID
        bad.file_meta.MediaStorageSOPInstanceUID = BAD_UID
        bad_path = folder / "bad.dcm"
        bad_path.write_bytes(encode(bad))
    # A different object under the stored object's SOP Instance UID: refused 0x0111.
    conflict = pydicom.dcmread(good)
    conflict.PatientName = OTHER_NAME
    conflict_path = folder / "conflict.dcm"
    pydicom.dcmwrite(conflict_path, conflict)
    return {"good": good, "dimse": by_dimse, "bad": bad_path, "conflict": conflict_path}


def _stow(server: Server, path: Path, headers: dict[str, str]) -> httpx.Response:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n"
    return httpx.post(
        f"{server.dicomweb}/studies",
        content=body,
        headers={**headers, "Content-Type": 'multipart/related; type="application/dicom"; '
                 "boundary=b"},
        timeout=60,
    )  # fmt: skip


def _findscu(port: int, *keys: str) -> None:
    args = ["findscu", "-S", "-aet", "PHITEST", "-aec", AE, "127.0.0.1", str(port)]
    args += ["-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID"]
    for key in keys:
        args += ["-k", key]
    run(args, check=False)


def _exercise(server: Server, port: int, objects: dict[str, Path]) -> None:
    # Stored objects with patient data, and refused ones, through both doors.
    assert _stow(server, objects["good"], AUTH).status_code == 200
    assert _stow(server, objects["bad"], AUTH).status_code == 409
    assert _stow(server, objects["conflict"], AUTH).status_code == 409
    sent = [str(objects[name]) for name in ("dimse", "bad", "conflict")]
    run(["storescu", "-aet", "PHITEST", "-aec", AE, "127.0.0.1", str(port), *sent], check=False)

    # QIDO-RS: malformed identifying keys (400) and good ones (200, in the access log).
    study = str(pydicom.dcmread(objects["good"]).StudyInstanceUID)
    for params in (
        {"PatientName": f"{NAME}\\{OTHER_NAME}"},
        {"PatientID": f"{PATIENT_ID}\\{PATIENT_ID}"},
        {"PatientBirthDate": BAD_BIRTH},
        {"PatientBirthDate": f"{BIRTH_DATE}-19000101"},
        {"AccessionNumber": f"{ACCESSION}\x01"},
        {"ReferringPhysicianName": "*" * 20 + REFERRING},
        {"StudyInstanceUID": BAD_UID},
        {"PatientName": "Qzphigiven*"},
        {"PatientID": PATIENT_ID, "includefield": "all"},
    ):
        httpx.get(f"{server.dicomweb}/studies", params=params, headers=AUTH, timeout=30)

    # C-FIND: the same malformed keys, and a good query.
    _findscu(port, f"PatientName={NAME}\\{OTHER_NAME}")
    _findscu(port, f"PatientBirthDate={BAD_BIRTH}")
    _findscu(port, f"PatientID={PATIENT_ID}\\{PATIENT_ID}")
    _findscu(port, f"StudyDescription={DESCRIPTION}\\x")
    _findscu(port, f"PatientName={NAME}", f"PatientID={PATIENT_ID}", "PatientBirthDate")

    # Users: a referrer without grants, with a password.
    _nubis(server, "users", "add", "phiref", "--role", "referrer", "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    _nubis(server, "users", "add", "phiup", "--role", "uploader", "--password-stdin",
           stdin=PASSWORD + "\n")  # fmt: skip
    referrer = httpx.BasicAuth("phiref", PASSWORD)
    # Failed logins.
    for password in (WRONG_PASSWORD, WRONG_PASSWORD + "2"):
        r = httpx.get(f"{server.url}/-/whoami", auth=httpx.BasicAuth("phiref", password))
        assert r.status_code == 401
    # Refused reads: out of the referrer's scope (404), and a role that may not read (403).
    r = httpx.get(f"{server.dicomweb}/studies/{study}/metadata", auth=referrer, timeout=30)
    assert r.status_code == 404, r.text
    r = httpx.get(f"{server.dicomweb}/studies", params={"PatientID": PATIENT_ID},
                  auth=httpx.BasicAuth("phiup", PASSWORD), timeout=30)  # fmt: skip
    assert r.status_code == 403, r.text
    # UPS-RS: a workitem with patient data created, searched for with good and malformed
    # identifying keys, retrieved, and refused to a role that may not hand out work.
    workitem = json.dumps([{
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": NAME}]},
        "00100020": {"vr": "LO", "Value": [PATIENT_ID]},
        "00100030": {"vr": "DA", "Value": [BIRTH_DATE]},
        "00741200": {"vr": "CS", "Value": ["HIGH"]},
        "00741204": {"vr": "LO", "Value": ["read"]},
        "00404005": {"vr": "DT", "Value": ["20260101120000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
    }])  # fmt: skip
    ups, uid = f"{server.dicomweb}/workitems", "1.2.826.0.1.3680043.8.498.4417"
    dicom_json = {"Content-Type": "application/dicom+json"}
    r = httpx.post(f"{ups}?workitem={uid}", content=workitem, headers={**AUTH, **dicom_json})
    assert r.status_code == 201, r.text
    for params in (
        {"PatientName": "Qzphigiven*"},
        {"PatientID": PATIENT_ID},
        {"PatientID": f"{PATIENT_ID}\x01"},
        {"ScheduledProcedureStepStartDateTime": BAD_BIRTH},
        {"PatientBirthDate": BIRTH_DATE},
    ):
        httpx.get(ups, params=params, headers=AUTH, timeout=30)
    assert httpx.get(f"{ups}/{uid}", headers=AUTH, timeout=30).status_code == 200
    r = httpx.post(ups, content=workitem, headers=dicom_json,
                   auth=httpx.BasicAuth("phiup", PASSWORD), timeout=30)  # fmt: skip
    assert r.status_code == 403, r.text
    # Break-glass, with a reason naming the patient.
    r = httpx.get(
        f"{server.dicomweb}/studies/{study}/metadata",
        auth=referrer,
        headers={"X-Nubis-Break-Glass": BREAK_GLASS},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_no_patient_data_in_a_debug_log(
    server: tuple[Server, int], objects: dict[str, Path]
) -> None:
    live, port = server
    _exercise(live, port, objects)
    live.stop()
    log = live.log()
    # The log is complete: worker processes logged at DEBUG, DIMSE and HTTP included.
    for expected in (
        " DEBUG ",
        "C-FIND",
        "C-STORE",
        "BREAK-GLASS",
        '"GET /dicom-web/studies',
        '"GET /dicom-web/workitems',
    ):
        assert expected in log, f"{expected!r} not in the log: the test would prove nothing"
    lowered = log.lower()
    found = {
        secret: [line for line in log.splitlines() if secret.lower() in line.lower()][:3]
        for secret in SECRETS
        if secret.lower() in lowered
    }
    assert not found, f"patient data in the log: {found}"
