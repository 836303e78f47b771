"""What the archive sends back is what it was given, and is as valid as what it was given.

Objects are stored with STOW-RS and read back with WADO-RS over plain HTTP (the raw multipart
body, no client library that might normalise bytes). As stored (``transfer-syntax=*``) every
object must be byte-identical to the file sent; and dciodvfy (dicom3tools) must report exactly
the errors it reports for the original, i.e. the archive adds none. Decompressed copies
(Explicit VR Little Endian on request) are checked with dciodvfy as well: a transcoder that
forgets to fix up the Pixel Data attributes is caught here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import (
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
)

from integration import AUTH, DicomFile, multipart_parts
from nubis.tools import synth

if TYPE_CHECKING:
    from conftest import LiveServer

DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dicom3tools (dciodvfy) not installed")
DCMDUMP = shutil.which("dcmdump")

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
EXPLICIT_LE = (
    f'multipart/related; type="application/dicom"; transfer-syntax={ExplicitVRLittleEndian}'
)


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's Error (and Abort) lines for ``path``; warnings are not our business here."""
    assert DCIODVFY is not None
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return sorted(line for line in lines if line.startswith(("Error", "Abort")))


def dcmdump_errors(path: Path) -> list[str]:
    """dcmdump's error lines for ``path`` (and its exit status, if not 0): what a tool that
    trusts the file meta makes of it."""
    assert DCMDUMP is not None, "dcmtk (dcmdump) not installed; scripts/test.sh installs it"
    proc = subprocess.run(
        [DCMDUMP, str(path)], capture_output=True, text=True, errors="replace", timeout=60
    )
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("E:")]
    return errors + ([f"exit status {proc.returncode}"] if proc.returncode else [])


def _stow(server: LiveServer, datas: list[bytes]) -> requests.Response:
    boundary = "nubis-validation-boundary"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + d + b"\r\n"
        for d in datas
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return requests.post(
        f"{server.dicomweb}/studies",
        data=body,
        headers={
            **AUTH,
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        },
        timeout=60,
    )


def _post(server: LiveServer, files: list[DicomFile]) -> None:
    response = _stow(server, [f.data for f in files])
    assert response.status_code == 200, response.text


def _retrieve(server: LiveServer, f: DicomFile, accept: str) -> bytes:
    url = f"{server.dicomweb}/studies/{f.study_uid}/series/{f.series_uid}/instances/{f.sop_uid}"
    response = requests.get(url, headers={**AUTH, "Accept": accept}, timeout=60)
    assert response.status_code == 200, response.text
    [(headers, data)] = multipart_parts(response.headers["content-type"], response.content)
    assert headers["content-type"].startswith("application/dicom")
    return data


@pytest.fixture(scope="module")
def stored(
    live_server: LiveServer,
    ct_series: list[DicomFile],
    mr_series: list[DicomFile],
    multiframe: DicomFile,
    multiframe_j2k: DicomFile,
    multiframe_rle: DicomFile,
) -> dict[str, DicomFile]:
    """One object of each synthetic kind, stored on the session's server."""
    picked = {
        "ct": ct_series[7],
        "mr": mr_series[2],
        "multiframe": multiframe,
        "multiframe_j2k": multiframe_j2k,
        "multiframe_rle": multiframe_rle,
    }
    _post(live_server, list(picked.values()))
    return picked


KINDS = ["ct", "mr", "multiframe", "multiframe_j2k", "multiframe_rle"]


@pytest.mark.parametrize("kind", KINDS)
def test_retrieved_as_stored_is_byte_identical(
    live_server: LiveServer, stored: dict[str, DicomFile], kind: str
) -> None:
    f = stored[kind]
    assert _retrieve(live_server, f, AS_STORED) == f.data


@needs_dciodvfy
@pytest.mark.parametrize("kind", KINDS)
def test_retrieved_as_stored_adds_no_dciodvfy_errors(
    live_server: LiveServer, stored: dict[str, DicomFile], kind: str, tmp_path: Path
) -> None:
    f = stored[kind]
    retrieved = tmp_path / "retrieved.dcm"
    retrieved.write_bytes(_retrieve(live_server, f, AS_STORED))
    assert dciodvfy_errors(retrieved) == dciodvfy_errors(f.path)


@needs_dciodvfy
@pytest.mark.parametrize("kind", ["multiframe_j2k", "multiframe_rle"])
def test_decompressed_copy_adds_no_dciodvfy_errors(
    live_server: LiveServer, stored: dict[str, DicomFile], kind: str, tmp_path: Path
) -> None:
    f = stored[kind]
    retrieved = tmp_path / "decompressed.dcm"
    retrieved.write_bytes(_retrieve(live_server, f, EXPLICIT_LE))
    ds = pydicom.dcmread(retrieved)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.pixel_array == f.dataset().pixel_array).all()
    # Compressed and native differ legitimately in nothing dciodvfy checks as an error, except
    # lines naming the (encapsulated) Pixel Data itself.
    original = [e for e in dciodvfy_errors(f.path) if not re.search(r"Pixel ?Data", e)]
    assert dciodvfy_errors(_as_dciodvfy_knows_it(retrieved)) == original


@pytest.mark.parametrize("kind", ["ct", "multiframe_j2k"])
def test_wado_uri_as_stored_is_byte_identical(
    live_server: LiveServer, stored: dict[str, DicomFile], kind: str
) -> None:
    f = stored[kind]
    response = requests.get(
        f"{live_server.url}/wado",
        params={
            "requestType": "WADO",
            "studyUID": f.study_uid,
            "seriesUID": f.series_uid,
            "objectUID": f.sop_uid,
            "contentType": "application/dicom",
        },
        timeout=60,
        headers=AUTH,
    )
    assert response.status_code == 200
    assert response.content == f.data


def test_served_back_as_stored_parses_in_dcmdump(
    live_server: LiveServer, pydicom_files: dict[str, DicomFile], tmp_path: Path
) -> None:
    """Whatever is served in its stored transfer syntax reads in a tool that trusts its file
    meta: dcmdump reports no error for any of pydicom's files, stored and retrieved."""
    files = list(pydicom_files.values())
    _post(live_server, files)
    for f in files:
        retrieved = tmp_path / f"{f.sop_uid}.dcm"
        retrieved.write_bytes(_retrieve(live_server, f, AS_STORED))
        assert dcmdump_errors(retrieved) == [], f.path.name


@pytest.mark.parametrize(
    ("meta_syntax", "implicit"),
    [(ExplicitVRLittleEndian, True), (ImplicitVRLittleEndian, False)],
    ids=["implicit-under-explicit", "explicit-under-implicit"],
)
def test_data_set_unlike_its_transfer_syntax_is_refused(
    live_server: LiveServer,
    pydicom_files: dict[str, DicomFile],
    tmp_path: Path,
    meta_syntax: str,
    implicit: bool,
) -> None:
    """PS3.10 7.1: (0002,0010) names the transfer syntax of the data set that follows. A data
    set encoded otherwise (an implicit VR one under Explicit VR Little Endian) is what dcmdump
    cannot read ("premature end of stream"), so STOW-RS refuses it (PS3.18 10.5.3: 409, failure
    reason 0xC000, the reason in a Warning header) rather than store and serve it."""
    ds = pydicom_files["explicit_le"].dataset()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = synth.synth_uid(
        91, "unlike", str(implicit)
    )
    ds.file_meta.TransferSyntaxUID = meta_syntax
    unlike = tmp_path / "unlike.dcm"
    pydicom.dcmwrite(unlike, ds, implicit_vr=implicit, little_endian=True, force_encoding=True)
    assert dcmdump_errors(unlike), "dcmdump reads the file: it does not show the fault"
    response = _stow(live_server, [unlike.read_bytes()])
    assert response.status_code == 409, response.text
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    found = "implicit" if implicit else "explicit"
    assert f"encoded in {found} VR" in response.headers["warning"], response.headers
    query = requests.get(
        f"{live_server.dicomweb}/instances",
        params={"SOPInstanceUID": ds.SOPInstanceUID},
        headers=AUTH,
        timeout=30,
    )
    assert query.status_code == 200 and query.json() == [], query.text


@needs_dciodvfy
@pytest.mark.parametrize("target", [HTJ2KLossless, JPEGLSLossless])
@pytest.mark.parametrize("kind", ["ct", "multiframe", "multiframe_rle"])
def test_recompressed_copy_adds_no_dciodvfy_errors(
    live_server: LiveServer, stored: dict[str, DicomFile], kind: str, target: str, tmp_path: Path
) -> None:
    """HTJ2K Lossless and JPEG-LS Lossless on request (issue 11, PS3.5 A.4.4, A.4.11):
    dciodvfy finds no error the stored object has not, dcmdump parses the file, and dcmtk's
    own JPEG-LS decoder (CharLS, as built into dcmtk) gives back the stored pixels; dcmtk 3.6.7
    has no HTJ2K decoder, so that copy is decoded by OpenJPEG (the encoder is OpenJPH)."""
    f = stored[kind]
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    retrieved = tmp_path / "recompressed.dcm"
    retrieved.write_bytes(_retrieve(live_server, f, accept))
    ds = pydicom.dcmread(retrieved)
    assert ds.file_meta.TransferSyntaxUID == target
    assert ds.SOPInstanceUID == f.sop_uid
    original = [e for e in dciodvfy_errors(f.path) if not re.search(r"Pixel ?Data", e)]
    assert dciodvfy_errors(_as_dciodvfy_knows_it(retrieved)) == original
    assert dcmdump_errors(retrieved) == []
    if target == JPEGLSLossless:
        decoded = tmp_path / "dcmdjpls.dcm"
        subprocess.run(["dcmdjpls", str(retrieved), str(decoded)], check=True, timeout=60)
        ds = pydicom.dcmread(decoded)
    assert np.array_equal(ds.pixel_array, f.dataset().pixel_array)


def _as_dciodvfy_knows_it(path: Path) -> Path:
    """The file itself, or for HTJ2K the same data set labelled JPEG 2000 Lossless.

    The installed dicom3tools predate the HTJ2K UIDs and read their pixel data as native
    ("undefined value length ... illegal"); JPEG 2000 Lossless has the same encapsulation
    (PS3.5 A.4), so under its UID dciodvfy checks every attribute of the copy as served.
    """
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID != HTJ2KLossless:
        return path
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    relabelled = path.with_name(f"j2k-label-{path.name}")
    ds.save_as(relabelled, enforce_file_format=True)
    return relabelled
