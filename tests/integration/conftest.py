"""Test data for the end-to-end suite, generated once per session.

Every file here is a *fixed point* of pydicom's writer: reading it and writing it again (which
is what dicomweb-client's store_instances does) gives the same bytes. So "the bytes we sent",
"the file on disk" and "what a transfer-syntax=* retrieve must return" are one and the same,
and byte-for-byte comparisons need no special cases.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from integration import (
    CT_PATIENT,
    MF_PATIENT,
    MR_PATIENT,
    SECONDARY_CAPTURE,
    DicomFile,
    encode,
)
from nubis.tools import synth


def _fixed_point(path: Path) -> DicomFile:
    """Rewrite ``path`` as pydicom writes it, and check that it now round-trips unchanged."""
    data = encode(pydicom.dcmread(path))
    path.write_bytes(data)
    assert encode(pydicom.dcmread(path)) == data, f"{path.name} does not round-trip in pydicom"
    return DicomFile(path)


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory: pytest.TempPathFactory) -> list[DicomFile]:
    """A 20-slice 512x512 CT series (about 10 MB)."""
    paths = synth.make_ct_series(
        tmp_path_factory.mktemp("ct"),
        n_instances=20,
        patient=CT_PATIENT,
        study_date="20240115",
        accession="ACC-CT-0001",
        seed=11,
        series_number=3,
    )
    return [_fixed_point(p) for p in paths]


@pytest.fixture(scope="session")
def mr_series(tmp_path_factory: pytest.TempPathFactory) -> list[DicomFile]:
    """An 8-slice 256x256 MR series in a study of its own."""
    paths = synth.make_mr_series(
        tmp_path_factory.mktemp("mr"),
        n_instances=8,
        patient=MR_PATIENT,
        study_date="20240302",
        accession="ACC-MR-0001",
        seed=12,
        series_number=5,
    )
    return [_fixed_point(p) for p in paths]


@pytest.fixture(scope="session")
def multiframe(tmp_path_factory: pytest.TempPathFactory) -> DicomFile:
    """A native (Explicit VR LE) 50-frame 256x256 multi-frame SC object."""
    path = synth.make_multiframe(
        tmp_path_factory.mktemp("mf") / "mf.dcm", frames=50, seed=13, patient=MF_PATIENT
    )
    return _fixed_point(path)


@pytest.fixture(scope="session")
def multiframe_j2k(tmp_path_factory: pytest.TempPathFactory, multiframe: DicomFile) -> DicomFile:
    """The same pixels as ``multiframe``, JPEG 2000 lossless, in the same study."""
    path = synth.make_multiframe(
        tmp_path_factory.mktemp("mfj2k") / "mf_j2k.dcm",
        frames=50,
        seed=13,
        patient=MF_PATIENT,
        study_uid=multiframe.study_uid,
        transfer_syntax=JPEG2000Lossless,
    )
    return _fixed_point(path)


@pytest.fixture(scope="session")
def multiframe_rle(tmp_path_factory: pytest.TempPathFactory) -> DicomFile:
    """A small RLE lossless multi-frame object (12 frames) of a patient of its own."""
    path = synth.make_multiframe(
        tmp_path_factory.mktemp("mfrle") / "mf_rle.dcm",
        frames=12,
        rows=128,
        columns=128,
        seed=14,
        patient=synth.PatientSpec("NUBIS-RLE-01", "Rossi^Marco", "19920630", "M"),
        transfer_syntax=RLELossless,
    )
    return _fixed_point(path)


# pydicom's bundled files, one per transfer syntax or kind of content that matters to an archive.
PYDICOM_FILES = {
    "explicit_le": "CT_small.dcm",
    "jpeg_baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg_ls": "MR_small_jpeg_ls_lossless.dcm",
    "j2k": "JPEG2000.dcm",
    "j2k_lossless": "MR_small_jp2klossless.dcm",
    "rle": "MR_small_RLE.dcm",
    "rle_2frame": "SC_rgb_rle_2frame.dcm",
    "deflate": "image_dfl.dcm",
    "big_endian": "MR_small_bigendian.dcm",
    "implicit": "MR_small_implicit.dcm",
    "priv_sq": "priv_SQ.dcm",
    "nested_priv_sq": "nested_priv_SQ.dcm",
    "rtplan": "rtplan.dcm",
    "rtstruct": "rtstruct.dcm",
    "sr": "reportsi.dcm",
}


def _prepare_pydicom_file(key: str, name: str, out_dir: Path) -> DicomFile:
    """A storable copy of a pydicom test file, with a SOP Instance UID of its own.

    Several MR_small_* files share one SOP Instance UID (they are one image in different
    transfer syntaxes); the archive rightly refuses a different object under a stored UID, so
    each copy gets a new one. Fragments without SOP Class/Study/Series (priv_SQ.dcm) become
    Secondary Capture objects, files without a meta header get one, and the meta header is
    made to agree with the data set (rtplan.dcm's does not, which the archive refuses).
    """
    source = get_testdata_file(name)
    assert source is not None, f"pydicom test file {name} is not available offline"
    ds = pydicom.dcmread(source, force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = SECONDARY_CAPTURE
        ds.Modality = "OT"
    ds.SOPInstanceUID = synth.synth_uid(99, "pydicom", key)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if keyword not in ds:
            setattr(ds, keyword, synth.synth_uid(99, keyword, key))
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = out_dir / f"{key}.dcm"
    pydicom.dcmwrite(path, ds)
    return _fixed_point(path)


@pytest.fixture(scope="session")
def pydicom_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DicomFile]:
    out_dir = tmp_path_factory.mktemp("pydicom")
    return {key: _prepare_pydicom_file(key, name, out_dir) for key, name in PYDICOM_FILES.items()}
