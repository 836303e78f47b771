"""Synthetic DICOM generator: validity (dciodvfy), determinism, pixel content, sizes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from nubis.tools import synth

DCIODVFY = shutil.which("dciodvfy")


def _iod_errors(path: Path) -> list[str]:
    """Error lines dciodvfy reports for ``path`` (warnings are allowed)."""
    assert DCIODVFY is not None
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Abort"))]


needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dicom3tools (dciodvfy) missing")


@needs_dciodvfy
def test_ct_series_passes_dciodvfy(tmp_path: Path) -> None:
    paths = synth.make_ct_series(tmp_path, n_instances=2, rows=128, columns=128)
    for path in paths:
        assert _iod_errors(path) == []


@needs_dciodvfy
@pytest.mark.parametrize("seed", range(5))
def test_mr_series_passes_dciodvfy(tmp_path: Path, seed: int) -> None:
    # Several seeds so both paired (Laterality required) and unpaired body parts occur.
    paths = synth.make_mr_series(tmp_path, n_instances=1, rows=64, columns=64, seed=seed)
    assert _iod_errors(paths[0]) == []


@needs_dciodvfy
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless])
def test_multiframe_passes_dciodvfy_and_decodes(tmp_path: Path, ts: str) -> None:
    path = synth.make_multiframe(
        tmp_path / "mf.dcm", frames=6, rows=64, columns=64, transfer_syntax=ts
    )
    assert _iod_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ts
    assert ds.NumberOfFrames == 6
    arr = ds.pixel_array
    assert arr.shape == (6, 64, 64)
    native = pydicom.dcmread(
        synth.make_multiframe(tmp_path / "native.dcm", frames=6, rows=64, columns=64)
    ).pixel_array
    # Lossless syntaxes must round-trip exactly to the native pixels.
    np.testing.assert_array_equal(arr, native)


@needs_dciodvfy
def test_large_instance_is_valid_with_exact_length(tmp_path: Path) -> None:
    size = 3 * 512 * 512 * 2 + 1000
    path = synth.make_large_instance(tmp_path / "large.dcm", size_bytes=size)
    assert _iod_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.NumberOfFrames == 3
    assert len(ds.PixelData) == 3 * 512 * 512 * 2
    assert path.stat().st_size > 3 * 512 * 512 * 2


@needs_dciodvfy
def test_corpus_instances_pass_dciodvfy(tmp_path: Path) -> None:
    paths = synth.make_corpus(tmp_path, n_studies=6)
    for path in paths:
        assert _iod_errors(path) == []


def test_ct_realistic_attributes_and_size(tmp_path: Path) -> None:
    paths = synth.make_ct_series(tmp_path, n_instances=3)
    ds = pydicom.dcmread(paths[1])
    assert ds.SOPClassUID == synth.CT_IMAGE_STORAGE
    assert ds.Rows == ds.Columns == 512
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert float(ds.RescaleIntercept) == -1024
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (40.0, 400.0)
    assert ds.Manufacturer and ds.InstitutionName
    assert float(ds.SliceLocation) == float(ds.ImagePositionPatient[2])
    assert ds.InstanceNumber == 2
    block = ds.private_block(0x0009, synth.PRIVATE_CREATOR)
    assert block[0x10].value == "synthetic"
    # About 0.5 MB per 512x512 16-bit slice.
    size = paths[1].stat().st_size
    assert 512 * 512 * 2 < size < 512 * 512 * 2 + 8192


def test_ct_pixels_look_like_a_phantom(tmp_path: Path) -> None:
    ds = pydicom.dcmread(synth.make_ct_series(tmp_path, n_instances=1)[0])
    hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert ds.pixel_array.max() < 4096
    assert np.median(hu[:8, :8]) < -900  # air in the corner
    assert -60 < np.median(hu[256 - 8 : 256 + 8, 256 - 8 : 256 + 8]) < 140  # soft tissue
    assert hu.max() > 500  # bone
    assert hu.std() > 100


def test_series_uids_and_geometry(tmp_path: Path) -> None:
    paths = synth.make_ct_series(tmp_path, n_instances=4, rows=32, columns=32)
    dss = [pydicom.dcmread(p) for p in paths]
    assert len({d.SOPInstanceUID for d in dss}) == 4
    assert len({d.SeriesInstanceUID for d in dss}) == 1
    assert len({d.StudyInstanceUID for d in dss}) == 1
    zs = [float(d.ImagePositionPatient[2]) for d in dss]
    assert zs == sorted(zs) and len(set(zs)) == 4
    for d in dss:
        assert d.SOPInstanceUID.is_valid
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID


def test_deterministic_from_seed(tmp_path: Path) -> None:
    a = synth.make_ct_series(tmp_path / "a", n_instances=2, rows=64, columns=64, seed=7)
    b = synth.make_ct_series(tmp_path / "b", n_instances=2, rows=64, columns=64, seed=7)
    c = synth.make_ct_series(tmp_path / "c", n_instances=2, rows=64, columns=64, seed=8)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    assert pydicom.dcmread(a[0]).SOPInstanceUID != pydicom.dcmread(c[0]).SOPInstanceUID


def test_shared_study_distinct_series(tmp_path: Path) -> None:
    patient = synth.PatientSpec("PX1", "Roe^Richard", "19600203", "M")
    study_uid = synth.synth_uid(1, "my-study")
    ct = synth.make_ct_series(
        tmp_path / "ct", n_instances=1, rows=32, columns=32, patient=patient,
        study_uid=study_uid, series_number=1,
    )  # fmt: skip
    mr = synth.make_mr_series(
        tmp_path / "mr", n_instances=1, rows=32, columns=32, patient=patient,
        study_uid=study_uid, series_number=2,
    )  # fmt: skip
    d1, d2 = pydicom.dcmread(ct[0]), pydicom.dcmread(mr[0])
    assert d1.StudyInstanceUID == d2.StudyInstanceUID == study_uid
    assert d1.SeriesInstanceUID != d2.SeriesInstanceUID
    assert d2.PatientID == "PX1" and str(d2.PatientName) == "Roe^Richard"
    assert d2.Modality == "MR"


def test_corpus_is_varied(tmp_path: Path) -> None:
    paths = synth.make_corpus(tmp_path, n_studies=40)
    dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert len({d.StudyInstanceUID for d in dss}) == 40
    assert len({d.AccessionNumber for d in dss}) == 40
    assert {d.Modality for d in dss} == {"CT", "MR"}
    patient_ids = [d.PatientID for d in dss]
    assert 10 < len(set(patient_ids)) < 40  # some patients have several studies
    assert patient_ids == synth.corpus_patient_ids(40)
    assert len({d.StudyDate for d in dss}) > 30
    assert len({str(d.PatientName) for d in dss}) > 10


def test_dataset_bytes_round_trip(tmp_path: Path) -> None:
    path = synth.make_mr_series(tmp_path, n_instances=1, rows=16, columns=16)[0]
    ds = pydicom.dcmread(path)
    data = synth.dataset_bytes(ds)
    assert data[128:132] == b"DICM"
    assert data == path.read_bytes()


def test_series_datasets_match_written_files(tmp_path: Path) -> None:
    paths = synth.make_mr_series(tmp_path, n_instances=2, rows=16, columns=16, seed=4)
    in_memory = list(synth.series_datasets("MR", n_instances=2, rows=16, columns=16, seed=4))
    assert [synth.dataset_bytes(ds) for ds in in_memory] == [p.read_bytes() for p in paths]
    with pytest.raises(TypeError):
        synth.series_datasets("CT", n_instances=1, colour=True)


def test_cli_corpus(tmp_path: Path) -> None:
    assert synth.main(["corpus", str(tmp_path), "--studies", "3"]) == 0
    assert len(list(tmp_path.rglob("*.dcm"))) == 3


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        synth.make_ct_series(tmp_path, n_instances=0)
    with pytest.raises(ValueError):
        synth.make_multiframe(tmp_path / "x.dcm", frames=2, transfer_syntax="1.2.3")
