"""Stored objects whose pixel module a decoder cannot use: a client error naming the attribute.

Ingest keeps an object whose Rows has two values, or whose Bits Allocated is 13: its metadata
and stored frames are served as they are. Decoding, rendering and transcoding it cannot work,
and must say so with 406 Not Acceptable (nubis.errors.NotAcceptable) and the attribute, never
with a TypeError from deep inside pydicom (a 500). Objects stored before ingest refused
unreadable encodings are read here too: whatever pydicom raises on them is a 406 as well.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from nubis.dicom.frame_codec import decode_frame, encode_frame
from nubis.dicom.render import RenderOptions, render_frame, render_thumbnail
from nubis.dicom.transcode import transcode_file
from nubis.errors import NotAcceptable

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _data(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(reason=f"pydicom test file {name} not available offline")
    return Path(str(path)).read_bytes()


def _changed(name: str, **values: Any) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_data(name)))
    for keyword, value in values.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _other_syntax(name: str) -> str:
    """A transfer syntax converting ``name`` into decodes or encodes its pixels."""
    syntax = pydicom.dcmread(io.BytesIO(_data(name))).file_meta.TransferSyntaxUID
    if syntax == ExplicitVRLittleEndian:
        return RLELossless
    return ImplicitVRLittleEndian


# Every way a stored object's pixels are read, each given the object's bytes.
READS: dict[str, Callable[[bytes, str], object]] = {
    "rendered": lambda data, _: render_frame(io.BytesIO(data), 1, RenderOptions("image/png")),
    "thumbnail": lambda data, _: render_thumbnail(io.BytesIO(data), RenderOptions()),
    "decoded frame": lambda data, _: decode_frame(io.BytesIO(data), 1),
    "encoded frame": lambda data, name: encode_frame(io.BytesIO(data), 1, _other_syntax(name)),
    "transcoded": lambda data, name: transcode_file(io.BytesIO(data), _other_syntax(name)),
}

FILES = ["CT_small.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm"]

# (attribute, value, what the reason says): values a decoder cannot use.
UNUSABLE = {
    "rows-twice": ("Rows", [128, 128], "(0028,0010) Rows has 2 values"),
    "columns-twice": ("Columns", [128, 128], "(0028,0011) Columns has 2 values"),
    "bits-allocated-twice": ("BitsAllocated", [16, 16], "(0028,0100) Bits Allocated has 2"),
    "photometric-twice": (
        "PhotometricInterpretation",
        ["MONOCHROME2", "MONOCHROME2"],
        "(0028,0004) Photometric Interpretation has 2 values",
    ),
    "bits-stored-twice": ("BitsStored", [8, 8], "(0028,0101) Bits Stored has 2 values"),
    "samples-twice": ("SamplesPerPixel", [1, 1], "(0028,0002) Samples per Pixel has 2 values"),
    "frames-twice": ("NumberOfFrames", ["1", "1"], "(0028,0008) Number of Frames has 2 values"),
    "no-rows": ("Rows", None, "(0028,0010) Rows is missing"),
    "zero-rows": ("Rows", 0, "(0028,0010) Rows is 0"),
    "bits-allocated-13": ("BitsAllocated", 13, "(0028,0100) Bits Allocated is 13"),
    "bits-stored-over-allocated": ("BitsStored", 40, "(0028,0101) Bits Stored is 40"),
    "samples-2": ("SamplesPerPixel", 2, "(0028,0002) Samples per Pixel is 2"),
    "pixel-representation-2": ("PixelRepresentation", 2, "(0028,0103) Pixel Representation is 2"),
    "planar-configuration-3": ("PlanarConfiguration", 3, "(0028,0006) Planar Configuration is 3"),
    "frames-negative": ("NumberOfFrames", "-4", "(0028,0008) Number of Frames is -4"),
    "photometric-empty": ("PhotometricInterpretation", "", "Photometric Interpretation is missing"),
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
@pytest.mark.parametrize("case", UNUSABLE.values(), ids=UNUSABLE.keys())
@pytest.mark.parametrize("name", FILES)
def test_unusable_pixel_module_is_406_naming_the_attribute(
    name: str, case: tuple[str, Any, str], read: Callable[[bytes, str], object]
) -> None:
    keyword, value, reason = case
    data = _changed(name, **{keyword: value})
    with pytest.raises(NotAcceptable) as refused:
        read(data, name)
    assert reason in refused.value.reason, refused.value.reason


def test_usable_values_still_decode() -> None:
    """The checks refuse only what cannot be used: a Planar Configuration on a grayscale image
    (meaningless, not harmful) or Number of Frames 0 (read as one frame) still render."""
    for values in ({"PlanarConfiguration": 0}, {"NumberOfFrames": "0"}):
        data = _changed("CT_small.dcm", **values)
        assert render_frame(io.BytesIO(data), 1, RenderOptions("image/png"))
        assert decode_frame(io.BytesIO(data), 1)


# Found by the mutation fuzz test (tests/integration/test_mutation_fuzz.py) on objects that
# ingest now refuses; objects stored before it did are read all the same: (file, [(byte,
# bit)], the attribute the reason names, or None when pydicom's error names none).
STORED_BEFORE = {
    "frames-unknown-vr": ("SC_rgb_small_odd.dcm", [(1311, 7)], "(0028,0008) Number of Frames"),
    "window-unknown-vr": ("MR_small_RLE.dcm", [(1484, 4)], "(0028,1050) Window Center"),
    "deflated-garbage-element": ("image_dfl.dcm", [(2305, 4)], None),
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
@pytest.mark.parametrize("case", STORED_BEFORE.values(), ids=STORED_BEFORE.keys())
def test_what_pydicom_raises_on_stored_data_is_406(
    case: tuple[str, list[tuple[int, int]], str | None], read: Callable[[bytes, str], object]
) -> None:
    name, flips, attribute = case
    data = bytearray(_data(name))
    for offset, bit in flips:
        data[offset] ^= 1 << bit
    try:
        read(bytes(data), name)
    except NotAcceptable as refused:
        assert attribute is None or attribute in refused.reason, refused.reason
