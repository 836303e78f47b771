"""The same SOP instance in another encoding (nubis.dicom.equivalence, issue 12)."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from nubis.dicom.equivalence import same_instance


def _bytes(ds: Dataset, **options: bool) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, **options)
    return out.getvalue()


def _same(a: bytes, b: bytes) -> bool:
    return same_instance(io.BytesIO(a), io.BytesIO(b))


def _multiframe(frames: int, size: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in "abc")
    ds.Rows = ds.Columns = size
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    pixels = np.arange(frames * size * size, dtype=np.uint16) % 4093
    ds.PixelData = pixels.tobytes()
    return ds


def test_file_meta_group_lengths_and_padding_are_encoding() -> None:
    original = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.ImplementationVersionName = "OTHER_TOOL"
    ds.add_new(0x00080000, "UL", 1234)  # a data set group length
    del ds[0xFFFCFFFC]  # Data Set Trailing Padding (PS3.10 7.2)
    assert _same(original, _bytes(ds))


@pytest.mark.parametrize(
    ("keyword", "value"), [("StudyDescription", "another"), ("InstanceNumber", 99)]
)
def test_another_value_is_another_object(keyword: str, value: object) -> None:
    original = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    setattr(ds, keyword, value)
    assert not _same(original, _bytes(ds))


def test_one_pixel_of_the_last_frame_decides() -> None:
    ds = _multiframe(3, 32)
    original = _bytes(ds)
    pixels = bytearray(ds.PixelData)
    pixels[-1] ^= 1
    ds.PixelData = bytes(pixels)
    ds.compress(RLELossless, generate_instance_uid=False)
    assert not _same(original, _bytes(ds))


def test_an_element_only_one_holds_is_another_object() -> None:
    original = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.ImageComments = "added"
    assert not _same(original, _bytes(ds))


def test_pixels_are_compared_a_frame_at_a_time() -> None:
    """40 frames of 256x256 (5 MiB native) against their RLE encoding: equal, while Python
    allocates less than 2 MiB at its peak, i.e. never the pixel data of either whole."""
    ds = _multiframe(40, 256)
    native = _bytes(ds)
    ds.compress(RLELossless, generate_instance_uid=False)
    rle = _bytes(ds)
    del ds
    tracemalloc.start()
    try:
        assert _same(native, rle)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20, peak
