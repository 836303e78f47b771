"""The permissive codecs of the default install (issue 11, nubis.dicom.codecs).

Every JPEG transfer syntax decodes without the GPL codec: lossless ones to exactly the pixels
that were compressed (files made by dcmtk's dcmcjpeg from pydicom's uncompressed test files),
lossy ones to exactly what dcmtk's dcmdjpeg (the IJG reference code) decodes, and pydicom's own
JPEG and JPEG-LS test files to the values pylibjpeg-libjpeg gave (digests recorded below, taken
with pylibjpeg-libjpeg 2.5.0). HTJ2K and JPEG-LS encoding is proved by decoding with another
library than the encoder's.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import pixel_array
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

import nubis.dicom.frame_codec as frame_codec
import nubis.dicom.syntaxes as syntaxes
from nubis.dicom import codecs
from nubis.dicom.recompress import compress_verified
from nubis.dicom.syntaxes import SUPPORTED_TARGETS
from nubis.dicom.transcode import transcode_file
from nubis.errors import NotAcceptable
from nubis.tools import synth

needs_dcmtk = pytest.mark.skipif(
    shutil.which("dcmcjpeg") is None, reason="dcmtk is installed by scripts/test.sh"
)


def data(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(reason=f"pydicom test file {name} not available offline")
    return Path(path)


def ours(path: Path | io.BytesIO) -> np.ndarray:
    """Decoded with nubis's plugin even where the opt-in GPL codec is installed too."""
    return pixel_array(path, raw=True, decoding_plugin=codecs.PLUGIN)


def dcmtk(tool: str, *args: str | Path) -> None:
    subprocess.run([tool, *map(str, args)], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def ct_12_bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic 12-bit CT slice (Bits Stored 12, as most CT is)."""
    out = tmp_path_factory.mktemp("ct12")
    return synth.make_ct_series(out, n_instances=1, rows=96, columns=80)[0]


# -- JPEG lossless (processes 14 and 14 SV1): exact ------------------------------------------

LOSSLESS_OPTIONS = {
    "sv1": (("+e1",), JPEGLosslessSV1),
    "sv4": (("+el", "+sv", "4"), JPEGLossless),
    "sv7": (("+el", "+sv", "7"), JPEGLossless),
}


@needs_dcmtk
@pytest.mark.parametrize("option", sorted(LOSSLESS_OPTIONS))
@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # 16-bit signed
        "MR_small.dcm",  # 16-bit signed, another range
        "SC_rgb_small_odd.dcm",  # RGB, odd size
        "ct12",
    ],
)
def test_jpeg_lossless_decodes_exactly(
    name: str, option: str, ct_12_bit: Path, tmp_path: Path
) -> None:
    source = ct_12_bit if name == "ct12" else data(name)
    args, syntax = LOSSLESS_OPTIONS[option]
    compressed = tmp_path / "lossless.dcm"
    dcmtk("dcmcjpeg", *args, source, compressed)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == syntax

    expected = pixel_array(source, raw=True)
    assert np.array_equal(ours(compressed), expected)
    # and through what WADO-RS serves, whichever plugin pydicom picks here
    native = pydicom.dcmread(io.BytesIO(transcode_file(compressed, ExplicitVRLittleEndian)))
    assert np.array_equal(pixel_array(native, raw=True), expected)


# -- JPEG lossy (baseline, extended 12-bit): as the IJG reference decodes ----------------------

LOSSY_FILES = [
    "JPGExtended.dcm",  # 12-bit extended
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
    "examples_ybr_color.dcm",  # 30 frames, 4:2:2
    "SC_jpeg_no_color_transform.dcm",
    "SC_jpeg_no_color_transform_2.dcm",
    "SC_rgb_jpeg_app14_dcmd.dcm",
    "SC_rgb_jpeg_lossy_gdcm.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # 4:1:1
    "SC_rgb_dcmtk_+eb+cr.dcm",  # RGB without colour transform
]


@needs_dcmtk
@pytest.mark.parametrize("name", LOSSY_FILES)
def test_jpeg_lossy_decodes_as_dcmtk(name: str, tmp_path: Path) -> None:
    reference = tmp_path / "dcmdjpeg.dcm"
    dcmtk("dcmdjpeg", "+cn", data(name), reference)  # +cn: no colour conversion, as raw=True
    assert np.array_equal(ours(data(name)), pixel_array(reference, raw=True))


@needs_dcmtk
@pytest.mark.parametrize(
    ("option", "syntax"), [("+eb", JPEGBaseline8Bit), ("+ee", JPEGExtended12Bit)]
)
def test_jpeg_lossy_made_by_dcmtk(
    option: str, syntax: str, ct_12_bit: Path, tmp_path: Path
) -> None:
    compressed, reference = tmp_path / "lossy.dcm", tmp_path / "dcmdjpeg.dcm"
    dcmtk("dcmcjpeg", option, ct_12_bit, compressed)
    dcmtk("dcmdjpeg", compressed, reference)
    assert pydicom.dcmread(compressed).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(ours(compressed), pixel_array(reference, raw=True))


# -- pydicom's own test files: the values pylibjpeg-libjpeg gave ----------------------------

GPL_CODEC_VALUES = [
    # name, SHA-256 of the raw decoded array (first 32 hex digits), dtype, shape
    ("SC_rgb_jpeg_gdcm.dcm", "169e619557b12114a7f0be8602026e9a", "uint8", (100, 100, 3)),
    ("JPEGLSNearLossless_08.dcm", "9eb46aa86c342094f826affc35703f71", "uint8", (45, 10)),
    ("JPEGLSNearLossless_16.dcm", "f929318278115ce952d85c011f752634", "uint16", (50, 10)),
    ("SC_rgb_jls_lossy_line.dcm", "bd5344c0a46bc6c0869921680aa72c1e", "uint8", (100, 100, 3)),
    ("SC_rgb_jls_lossy_sample.dcm", "bd5344c0a46bc6c0869921680aa72c1e", "uint8", (100, 100, 3)),
    ("MR_small_jpeg_ls_lossless.dcm", "88617aaa46138fb1b6e2a951e762d962", "int16", (64, 64)),
]


@pytest.mark.parametrize(("name", "digest", "dtype", "shape"), GPL_CODEC_VALUES)
def test_bundled_files_decode_as_before(
    name: str, digest: str, dtype: str, shape: tuple[int, ...]
) -> None:
    # Default plugin choice: nubis's plugin for JPEG, pydicom's pyjpegls plugin for JPEG-LS.
    arr = pixel_array(data(name), raw=True)
    assert (str(arr.dtype), arr.shape) == (dtype, shape)
    assert hashlib.sha256(arr.tobytes()).hexdigest()[:32] == digest


def test_jpeg_ls_lossless_is_its_source() -> None:
    assert np.array_equal(
        pixel_array(data("MR_small_jpeg_ls_lossless.dcm")), pixel_array(data("MR_small.dcm"))
    )


@pytest.mark.skipif(
    importlib.util.find_spec("libjpeg") is None,
    reason="compares with pylibjpeg-libjpeg, installed only with the opt-in gpl-codecs extra",
)
@pytest.mark.parametrize(
    "name", ["SC_rgb_jpeg_gdcm.dcm", "JPGExtended.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm"]
)
def test_against_gpl_codec(name: str) -> None:
    # Lossless: equal. Lossy: IDCTs may round differently (ISO 10918-2 allows it); libjpeg-turbo
    # equals dcmtk, GDCM and Pillow, and differs from libjpeg by one step at most on these.
    try:
        theirs = pixel_array(data(name), raw=True, decoding_plugin="pylibjpeg")
    except RuntimeError:
        pytest.skip(reason=f"pylibjpeg-libjpeg cannot decode {name} either")
    mine = ours(data(name))
    lossless = pydicom.dcmread(data(name)).file_meta.TransferSyntaxUID in (
        JPEGLossless,
        JPEGLosslessSV1,
    )
    difference = np.abs(mine.astype(np.int64) - theirs.astype(np.int64)).max()
    assert difference == 0 if lossless else difference <= 1


# -- hostile codestreams ---------------------------------------------------------------------


def test_codestream_larger_than_the_data_set_is_refused(tmp_path: Path) -> None:
    # A frame whose SOF claims 16 times the data set's size is refused before decoding, so a
    # small object cannot make the codec allocate an image of its choosing.
    ds = pydicom.dcmread(data("SC_rgb_jpeg_dcmtk.dcm"))
    ds.Rows, ds.Columns = int(ds.Rows) // 4, int(ds.Columns) // 4
    path = tmp_path / "liar.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(RuntimeError, match="the data set says"):
        ours(path)
    with pytest.raises(NotAcceptable):
        transcode_file(path, ExplicitVRLittleEndian)


# -- encoders: HTJ2K and JPEG-LS lossless ----------------------------------------------------


def test_lossless_targets_offered() -> None:
    assert {HTJ2KLossless, JPEGLSLossless, RLELossless} <= SUPPORTED_TARGETS


@pytest.mark.parametrize("target", [HTJ2KLossless, JPEGLSLossless])
@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # 16-bit signed
        "MR_small.dcm",
        "examples_rgb_color.dcm",  # RGB
        "SC_rgb_rle_2frame.dcm",  # RGB, 2 frames, from RLE
        "examples_palette.dcm",  # PALETTE COLOR, 8-bit
        "MR_small_jpeg_ls_lossless.dcm",  # from JPEG-LS
        "MR_small_jp2klossless.dcm",  # from JPEG 2000
        "MR_small_bigendian.dcm",  # from the retired big endian
        "image_dfl.dcm",  # from deflate
    ],
)
def test_compress_verified_is_pixel_exact(name: str, target: str) -> None:
    source = data(name)
    payload = compress_verified(source, target)
    result = pydicom.dcmread(io.BytesIO(payload))
    before = pydicom.dcmread(source)
    assert result.file_meta.TransferSyntaxUID == target
    assert result.SOPInstanceUID == before.SOPInstanceUID
    assert result.PhotometricInterpretation == before.PhotometricInterpretation
    # decoded by a library other than the encoder's: OpenJPEG for HTJ2K (OpenJPH encodes)
    assert np.array_equal(pixel_array(result, raw=True), pixel_array(before, raw=True))


def test_htj2k_frames_are_codestreams() -> None:
    codestream = frame_codec.encode_frame(data("CT_small.dcm"), 1, HTJ2KLossless)
    assert codestream[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: no JPH box around it
    assert b"\xff\x50" in codestream[:400]  # CAP marker: HTJ2K (ISO 15444-15)


@pytest.mark.parametrize(
    ("name", "target", "why"),
    [
        ("JPGExtended.dcm", HTJ2KLossless, "not stored losslessly"),
        ("CT_small.dcm", JPEG2000, "not a lossless codec"),
        ("CT_small.dcm", ExplicitVRLittleEndian, "not a lossless codec"),
        ("rtdose.dcm", HTJ2KLossless, "cannot be converted"),  # 32-bit samples
        ("liver_1frame.dcm", JPEGLSLossless, "cannot be converted"),  # 1-bit samples
        ("SC_ybr_full_422_uncompressed.dcm", HTJ2KLossless, "Photometric Interpretation"),
        # 3x3 RGB: CharLS's output buffer estimate is smaller than its headers
        ("SC_rgb_small_odd.dcm", JPEGLSLossless, "cannot be converted"),
        ("rtplan.dcm", HTJ2KLossless, "no pixel data"),
    ],
)
def test_compress_verified_refusals(name: str, target: str, why: str) -> None:
    with pytest.raises(NotAcceptable, match=why):
        compress_verified(data(name), target)


def test_compress_verified_catches_a_wrong_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    # An encoder that changes one sample (a fault no real file can cause on demand).
    def off_by_one(arr: np.ndarray) -> bytes:
        wrong = arr.copy()
        wrong.flat[1234] += 1
        return codecs.encode_htj2k_lossless(wrong)

    monkeypatch.setitem(syntaxes.OWN_ENCODERS, HTJ2KLossless, off_by_one)
    with pytest.raises(NotAcceptable, match="frame 1 would not be pixel-exact"):
        compress_verified(data("CT_small.dcm"), HTJ2KLossless)
