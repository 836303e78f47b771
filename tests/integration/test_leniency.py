"""Issue 12: what real archives hold comes in, with a record of what was odd.

STOW-RS answers an object stored with warnings 202, with Warning Reason (0008,1196) in its
ReferencedSOPSequence item and a Warning header saying what (PS3.18 10.5.3); what is served
is the object as it was sent.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from integration import AUTH, DicomFile, encode
from integration.dimse_helpers import need_dcmtk
from integration.test_bad_input import (
    REFERENCED_SOP_SEQUENCE,
    retrieve_as_stored,
    stow,
    stow_body,
    stow_result,
)
from nubis.tools import synth

if TYPE_CHECKING:
    from conftest import LiveServer

WARNING_REASON = "00081196"


@pytest.fixture(scope="module")
def server(live_server: LiveServer) -> Iterator[LiveServer]:
    start = live_server.log_path.stat().st_size if live_server.log_path.exists() else 0
    yield live_server
    log = live_server.log()[start:]
    assert "Traceback" not in log, log[-3000:]


def warning_reasons(response: requests.Response) -> list[int | None]:
    body: dict[str, Any] = response.json()
    return [
        item.get(WARNING_REASON, {}).get("Value", [None])[0]
        for item in body.get(REFERENCED_SOP_SEQUENCE, {}).get("Value", [])
    ]


def as_file(ds: pydicom.Dataset, folder: Path) -> DicomFile:
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return DicomFile(path)


def test_the_same_instance_in_another_encoding_is_stored_with_a_warning(
    server: LiveServer, tmp_path: Path
) -> None:
    """A re-sent instance, RLE-compressed by a router, is 202 with Warning Reason 0xB000 and a
    Warning header naming it, not 409 / 0x0111; the first encoding is what is served."""
    ds = next(synth.series_datasets("MR", n_instances=1, seed=1201, patient=synth.PatientSpec(
        "LENIENT-RESEND", "Resend^Rita", "19800101", "F")))  # fmt: skip
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    first = as_file(ds, tmp_path)
    (tmp_path / "rle").mkdir()
    response = stow(server, stow_body(first.data))
    assert response.status_code == 200, response.text
    compressed = copy.deepcopy(ds)
    compressed.compress(RLELossless, generate_instance_uid=False)
    again = stow(server, stow_body(as_file(compressed, tmp_path / "rle").data))
    assert again.status_code == 202, again.text
    assert stow_result(server, again) == ([ds.SOPInstanceUID], [])
    assert warning_reasons(again) == [0xB000]
    assert "already stored in another encoding" in again.headers["warning"]
    assert retrieve_as_stored(server, first) == first.data


@pytest.mark.parametrize(
    ("source", "off_by"), [("MR_small.dcm", 4), ("MR_small_implicit.dcm", 8388608)]
)
def test_a_wrong_file_meta_group_length_is_rewritten(
    server: LiveServer, tmp_path: Path, source: str, off_by: int
) -> None:
    """Issue 12: a (0002,0000) that is not the length of the file meta (real archives hold
    them) is kept with the file meta written anew (202, Warning Reason 0xB000: coerced), the
    data set byte for byte as sent. As sent, dcmdump trusts the length and reads data set
    elements as file meta, or fails (issue 9 refused such files for that); as served, it reads
    the file cleanly."""
    need_dcmtk("dcmdump")
    ds = pydicom.dcmread(get_testdata_file(source))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.1212{off_by}"
    original = as_file(ds, tmp_path)
    data = bytearray(original.data)
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    true_length = int.from_bytes(data[140:144], "little")
    data[140:144] = (true_length + off_by).to_bytes(4, "little")
    sent = tmp_path / "wrong_length.dcm"
    sent.write_bytes(bytes(data))
    as_sent = subprocess.run(["dcmdump", str(sent)], capture_output=True, text=True)
    assert as_sent.returncode != 0 or "Meta Information Header" in as_sent.stderr

    response = stow(server, stow_body(bytes(data)))
    assert response.status_code == 202, response.text
    assert warning_reasons(response) == [0xB000]
    assert "Group Length" in response.headers["warning"]
    served = retrieve_as_stored(server, original)
    data_set_start = 144 + true_length
    assert served[data_set_start:] == bytes(data[data_set_start:])
    assert served[140:144] == true_length.to_bytes(4, "little")
    served_file = tmp_path / "served.dcm"
    served_file.write_bytes(served)
    as_served = subprocess.run(["dcmdump", str(served_file)], capture_output=True, text=True)
    assert as_served.returncode == 0 and as_served.stderr == "", as_served.stderr
    assert ds.SOPInstanceUID in as_served.stdout


def test_hexadecimal_uids_work_end_to_end(server: LiveServer) -> None:
    """Issue 12: pydicom's bad_sequence.dcm names its study, series and instance by 64
    hexadecimal digits, not UIDs as PS3.5 9.1 makes them; Orthanc takes it, and so does nubis
    (202, Warning Reason 0xB007, PS3.18 10.5.3), and serves it under those names: QIDO-RS
    (PS3.18 10.6), WADO-RS instance, series, study, metadata and frames (10.4) through
    dicomweb-client, byte for byte as sent; WADO-URI (9.1); the study page; DELETE."""
    sent = Path(get_testdata_file("bad_sequence.dcm"))
    ds = pydicom.dcmread(sent)
    study, series, sop = (str(ds[k].value) for k in
                          ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))  # fmt: skip
    assert len(study) == 64 and not study.replace(".", "").isdigit()
    # dicomweb-client names such objects only when told to (its permissive_uid: letters too).
    client = DICOMwebClient(url=server.dicomweb, headers=AUTH, permissive_uid=True)
    stored = client.store_instances([ds])  # dicomweb-client writes the file's own bytes
    assert [str(i.ReferencedSOPInstanceUID) for i in stored.ReferencedSOPSequence] == [sop]
    assert stored.ReferencedSOPSequence[0].WarningReason == 0xB007
    try:
        [found] = client.search_for_studies(search_filters={"StudyInstanceUID": study})
        assert found["0020000D"]["Value"] == [study]
        [listed] = client.search_for_instances(study, series)
        assert listed["00080018"]["Value"] == [sop]
        as_stored = (("application/dicom", "*"),)
        assert encode(client.retrieve_instance(study, series, sop, media_types=as_stored)) == (
            sent.read_bytes()
        )
        for got in (client.retrieve_series(study, series, media_types=as_stored),
                    client.retrieve_study(study, media_types=as_stored)):  # fmt: skip
            assert [encode(d) for d in got] == [sent.read_bytes()]
        meta = client.retrieve_instance_metadata(study, series, sop)
        assert meta["0020000E"]["Value"] == [series]
        [frame] = client.retrieve_instance_frames(
            study, series, sop, frame_numbers=[1],
            media_types=(("image/jpeg", str(ds.file_meta.TransferSyntaxUID)),),
        )  # fmt: skip
        assert frame == next(generate_frames(ds.PixelData, number_of_frames=1))
        wado = requests.get(f"{server.url}/wado", headers=AUTH, timeout=30, params={
            "requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": sop,
            "contentType": "application/dicom", "transferSyntax": "*"})  # fmt: skip
        assert wado.status_code == 200 and wado.content == sent.read_bytes()
        page = requests.get(f"{server.url}/ui/studies/{study}", headers=AUTH, timeout=30)
        assert page.status_code == 200 and series in page.text
    finally:
        client.delete_study(study)
    assert client.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
