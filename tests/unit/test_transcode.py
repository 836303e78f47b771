"""Transfer syntax conversion (PS3.18 8.7.3.5) on pydicom's bundled test files."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels import (
    convert_color_space,
    get_decoder,
    get_encoder,
    pack_bits,
    pixel_array,
)
from pydicom.uid import (
    JPEG2000,
    MPEG2MPML,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

import nubis.dicom.frame_codec as frame_codec
import nubis.dicom.transcode as transcode
from nubis.dicom.frame_codec import decode_frame, encode_frame
from nubis.dicom.syntaxes import SUPPORTED_TARGETS, can_transcode
from nubis.dicom.transcode import transcode_file
from nubis.errors import BadRequest, NotAcceptable
from nubis.tools import synth

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
# Elements the conversion is allowed to change (PS3.5 8.2: they describe the encoded pixels).
PIXEL_DESCRIPTION = {0x00280004, 0x00280006, 0x00280008, 0x7FE00010, 0x7FE00001, 0x7FE00002}


def data(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(reason=f"pydicom test file {name} not available offline")
    return Path(path)


def read(payload: bytes) -> FileDataset:
    return pydicom.dcmread(io.BytesIO(payload))


def values(ds: Dataset) -> dict[int, Any]:
    """Element values by tag, recursively, excluding the pixel description."""
    out: dict[int, Any] = {}
    for elem in ds:
        if elem.tag in PIXEL_DESCRIPTION:
            continue
        if elem.VR == "SQ":
            out[elem.tag] = [values(item) for item in elem.value]
        else:
            out[elem.tag] = elem.value
    return out


# -- negotiation ---------------------------------------------------------------------------------


def test_supported_targets() -> None:
    assert set(UNCOMPRESSED) | {RLELossless, JPEG2000Lossless} <= SUPPORTED_TARGETS
    assert (JPEGLSLossless in SUPPORTED_TARGETS) == get_encoder(JPEGLSLossless).is_available
    assert JPEG2000 not in SUPPORTED_TARGETS  # lossy encoders are never offered
    assert JPEGBaseline8Bit not in SUPPORTED_TARGETS


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        (JPEGBaseline8Bit, JPEGBaseline8Bit, True),
        (ExplicitVRLittleEndian, RLELossless, True),
        (ExplicitVRBigEndian, ExplicitVRLittleEndian, True),
        (JPEGBaseline8Bit, ExplicitVRLittleEndian, True),
        (JPEG2000, JPEG2000Lossless, True),
        (RLELossless, DeflatedExplicitVRLittleEndian, True),
        (ExplicitVRLittleEndian, JPEGBaseline8Bit, False),
        (JPEG2000Lossless, JPEG2000, False),
        (ExplicitVRLittleEndian, ExplicitVRBigEndian, False),
        (MPEG2MPML, ExplicitVRLittleEndian, False),
        ("1.2.3.4", ExplicitVRLittleEndian, False),
        (ExplicitVRLittleEndian, "1.2.3.4", False),
    ],
)
def test_can_transcode(source: str, target: str, expected: bool) -> None:
    assert can_transcode(source, target) is expected


# -- whole files ---------------------------------------------------------------------------------


def test_same_syntax_returns_stored_bytes() -> None:
    for name in ("JPGExtended.dcm", "MR_small_RLE.dcm", "rtplan.dcm"):
        path = data(name)
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert transcode_file(path, ts) == path.read_bytes()


LOSSLESS_CASES = [
    ("CT_small.dcm", RLELossless),
    ("CT_small.dcm", JPEG2000Lossless),
    ("CT_small.dcm", ImplicitVRLittleEndian),
    ("CT_small.dcm", DeflatedExplicitVRLittleEndian),
    ("MR_small_implicit.dcm", ExplicitVRLittleEndian),
    ("MR_small_bigendian.dcm", ExplicitVRLittleEndian),
    ("MR_small_bigendian.dcm", RLELossless),
    ("MR_small_RLE.dcm", ExplicitVRLittleEndian),
    ("MR_small_RLE.dcm", JPEG2000Lossless),
    ("MR_small_jp2klossless.dcm", RLELossless),
    ("MR_small_jpeg_ls_lossless.dcm", ImplicitVRLittleEndian),
    ("rtdose_rle.dcm", ExplicitVRLittleEndian),
    ("rtdose_expb.dcm", DeflatedExplicitVRLittleEndian),
    ("SC_rgb_rle_2frame.dcm", JPEG2000Lossless),
    ("SC_rgb_small_odd_big_endian.dcm", ExplicitVRLittleEndian),
    ("examples_jpeg2k.dcm", RLELossless),
    ("examples_palette.dcm", RLELossless),
    ("image_dfl.dcm", JPEG2000Lossless),
    ("liver_expb_1frame.dcm", ImplicitVRLittleEndian),
    ("SC_ybr_full_422_uncompressed.dcm", ImplicitVRLittleEndian),
]


@pytest.mark.parametrize(("name", "target"), LOSSLESS_CASES)
def test_lossless_round_trip(name: str, target: str) -> None:
    path = data(name)
    source = pydicom.dcmread(path)
    payload = transcode_file(path, target)

    assert payload[128:132] == b"DICM"
    result = read(payload)
    assert result.file_meta.TransferSyntaxUID == target
    assert result.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert values(result) == values(source)
    decoded, expected = result.pixel_array, source.pixel_array
    assert (decoded.dtype.kind, decoded.dtype.itemsize) == (
        expected.dtype.kind,
        expected.dtype.itemsize,
    )
    assert np.array_equal(decoded, expected)


@pytest.mark.parametrize("target", [ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless])
def test_private_elements_keep_their_bytes(target: str) -> None:
    path = data("CT_small.dcm")
    # Fresh reads, and only keys() before get_item(), so both sides stay undecoded raw bytes.
    source = pydicom.dcmread(path)
    result = read(transcode_file(path, target))
    private = [tag for tag in source.keys() if tag.is_private]  # noqa: SIM118
    assert len(private) > 10
    for tag in private:
        # pydicom decodes empty values eagerly; "" and b"" are the same zero-length value.
        expected = source.get_item(tag).value or b""
        assert (result.get_item(tag).value or b"") == expected, tag


def test_private_sequence_survives_vr_change() -> None:
    path = data("priv_SQ.dcm")
    source = pydicom.dcmread(path)
    result = read(transcode_file(path, ExplicitVRLittleEndian))
    assert values(result) == values(source)


def test_lossy_source_decoded_keeps_lossy_flag() -> None:
    path = data("SC_rgb_jpeg_dcmtk.dcm")  # YBR_FULL baseline JPEG, Lossy Image Compression 01
    result = read(transcode_file(path, ExplicitVRLittleEndian))
    assert result.PhotometricInterpretation == "RGB"
    assert result.LossyImageCompression == "01"
    assert np.array_equal(result.pixel_array, pixel_array(path))


def test_lossy_flag_added_when_missing(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("SC_rgb_jpeg_dcmtk.dcm"))
    del ds.LossyImageCompression
    path = tmp_path / "unflagged.dcm"
    ds.save_as(path, enforce_file_format=True)

    result = read(transcode_file(path, RLELossless))
    assert result.LossyImageCompression == "01"
    assert result.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(result.LossyImageCompressionRatio) > 1


def test_multiframe_lossy_to_lossless() -> None:
    path = data("examples_ybr_color.dcm")  # 30-frame YBR_FULL_422 baseline JPEG
    result = read(transcode_file(path, ExplicitVRLittleEndian))
    assert (result.NumberOfFrames, result.PhotometricInterpretation) == (30, "RGB")
    assert np.array_equal(result.pixel_array[29], pixel_array(path, index=29))


@pytest.mark.parametrize("target", UNCOMPRESSED)
def test_no_pixel_data_between_uncompressed(target: str) -> None:
    path = data("rtplan.dcm")
    result = read(transcode_file(path, target))
    assert result.file_meta.TransferSyntaxUID == target
    assert values(result) == values(pydicom.dcmread(path))


@pytest.mark.parametrize(
    ("name", "target"),
    [
        ("rtplan.dcm", RLELossless),  # no pixel data
        ("rtplan.dcm", JPEG2000Lossless),
        ("CT_small.dcm", JPEGBaseline8Bit),  # never lossy
        ("MR_small_RLE.dcm", JPEG2000),
        ("CT_small.dcm", ExplicitVRBigEndian),  # retired, not produced
        ("CT_small.dcm", "1.2.3.4"),
        ("rtdose.dcm", JPEG2000Lossless),  # 32-bit is beyond the codec
        ("liver_1frame.dcm", RLELossless),  # 1-bit is beyond the codec
    ],
)
def test_refusals_name_both_syntaxes(name: str, target: str) -> None:
    path = data(name)
    source_ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    with pytest.raises(NotAcceptable) as info:
        transcode_file(path, target)
    assert str(source_ts) in info.value.reason
    assert target in info.value.reason


def test_undecodable_source_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    path = data("MR_small_jp2klossless.dcm")
    monkeypatch.setattr(transcode, "decodable", lambda uid: False)
    with pytest.raises(NotAcceptable, match="cannot be decoded"):
        transcode_file(path, ExplicitVRLittleEndian)


def test_float_pixel_data_uncompressed_only(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("MR_small.dcm"))
    del ds.PixelData, ds.PixelRepresentation, ds.BitsStored
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.arange(64 * 64, dtype=np.float32).tobytes()
    path = tmp_path / "float.dcm"
    ds.save_as(path, enforce_file_format=True)

    result = read(transcode_file(path, ImplicitVRLittleEndian))
    assert result.FloatPixelData == ds.FloatPixelData
    with pytest.raises(NotAcceptable, match="float"):
        transcode_file(path, RLELossless)


def test_not_a_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x01\x02" * 200)
    with pytest.raises(NotAcceptable):
        transcode_file(path, ExplicitVRLittleEndian)


# -- single frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compressed", "native"),
    [("rtdose_rle.dcm", "rtdose.dcm"), ("MR_small_RLE.dcm", "MR_small.dcm")],
)
def test_decoded_frames_equal_native_twin(compressed: str, native: str) -> None:
    twin = pydicom.dcmread(data(native))
    frames = int(twin.get("NumberOfFrames", 1))
    length = len(twin.PixelData) // frames
    for number in range(1, frames + 1):
        expected = twin.PixelData[(number - 1) * length : number * length]
        assert decode_frame(data(compressed), number) == expected
        assert decode_frame(data(native), number) == expected


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_rle_2frame.dcm",
        "examples_jpeg2k.dcm",
        "SC_ybr_full_422_uncompressed.dcm",  # native 4:2:2 stays subsampled
        "liver_1frame.dcm",  # 1-bit stays packed
        "SC_rgb_small_odd_big_endian.dcm",
        "image_dfl.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
    ],
)
def test_decoded_frames_match_uncompressed_file(name: str) -> None:
    path = data(name)
    native = read(transcode_file(path, ExplicitVRLittleEndian))
    frames = b"".join(
        decode_frame(path, number) for number in range(1, int(native.get("NumberOfFrames", 1)) + 1)
    )
    # Pixel Data is padded to an even length (PS3.5 7.1.1).
    assert native.PixelData[: len(frames)] == frames
    assert len(native.PixelData) - len(frames) in (0, 1)


def test_decode_frame_decodes_only_that_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    indexes: list[int | None] = []

    def spy(*args: Any, **kwargs: Any) -> np.ndarray:
        indexes.append(kwargs.get("index"))
        return pixel_array(*args, **kwargs)

    monkeypatch.setattr(frame_codec, "pixel_array", spy)
    decode_frame(data("SC_rgb_rle_2frame.dcm"), 2)
    assert indexes == [1]


@pytest.mark.parametrize("frame", [0, 16])
def test_decode_frame_out_of_range(frame: int) -> None:
    with pytest.raises(BadRequest, match="out of range"):
        decode_frame(data("rtdose_rle.dcm"), frame)


def test_decode_frame_without_pixel_data() -> None:
    with pytest.raises(NotAcceptable, match="no pixel data"):
        decode_frame(data("rtplan.dcm"), 1)


def test_encode_frame_rle() -> None:
    path = data("SC_rgb_rle_2frame.dcm")
    stored = list(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=2))
    assert encode_frame(path, 2, RLELossless) == stored[1]

    mr = data("MR_small.dcm")
    segment = encode_frame(mr, 1, RLELossless)
    decoded = get_decoder(RLELossless).as_array(
        encapsulate([segment]),
        rows=64,
        columns=64,
        samples_per_pixel=1,
        bits_allocated=16,
        bits_stored=16,
        pixel_representation=1,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )[0]
    assert np.array_equal(decoded, pixel_array(mr))


def test_encode_frame_jpeg2000_from_lossy_color() -> None:
    path = data("examples_ybr_color.dcm")
    codestream = encode_frame(path, 5, JPEG2000Lossless)
    assert codestream[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ
    decoded = get_decoder(JPEG2000Lossless).as_array(
        encapsulate([codestream]),
        rows=240,
        columns=320,
        samples_per_pixel=3,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        photometric_interpretation="RGB",
        planar_configuration=0,
        number_of_frames=1,
    )[0]
    assert np.array_equal(decoded, pixel_array(path, index=4))


def test_encode_frame_uncompressed_and_refusals() -> None:
    path = data("MR_small_RLE.dcm")
    assert encode_frame(path, 1, ExplicitVRLittleEndian) == decode_frame(path, 1)
    with pytest.raises(NotAcceptable, match=str(RLELossless)):
        encode_frame(path, 1, JPEG2000)
    with pytest.raises(NotAcceptable, match="not encodable"):
        encode_frame(data("rtdose.dcm"), 1, JPEG2000Lossless)
    with pytest.raises(BadRequest):
        encode_frame(path, 2, RLELossless)


def test_uid_type_accepted() -> None:
    path = data("MR_small.dcm")
    assert read(transcode_file(path, UID(str(RLELossless)))).file_meta.TransferSyntaxUID == (
        RLELossless
    )


# -- the spliced path: encapsulated to Explicit VR Little Endian ---------------------------------


def _dcmcjpeg(source: Path, out: Path) -> Path:
    if shutil.which("dcmcjpeg") is None:
        pytest.skip(reason="dcmtk is installed by scripts/test.sh")
    subprocess.run(["dcmcjpeg", "+e1", str(source), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize(
    "name",
    [
        "jpeg-lossless",  # CT_small through dcmcjpeg: the WADO-RS transcoding benchmark's case
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "multiframe-rle",  # 12 frames, synthetic
        "JPEG2000.dcm",
    ],
)
def test_spliced_path_writes_what_the_general_path_writes(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name == "jpeg-lossless":
        path = _dcmcjpeg(data("CT_small.dcm"), tmp_path / "jll.dcm")
    elif name == "multiframe-rle":
        path = synth.make_multiframe(
            tmp_path / "mf.dcm", frames=12, rows=32, columns=48, transfer_syntax=RLELossless
        )
    else:
        path = data(name)
    spliced = transcode_file(path, ExplicitVRLittleEndian)
    monkeypatch.setattr(transcode, "_spliced_native", lambda *args: None)
    general = transcode_file(path, ExplicitVRLittleEndian)
    assert spliced == general
    # and the stored data set bytes before the pixel data are in it unchanged
    stored = path.read_bytes()
    source = pydicom.dcmread(path)
    first = source.get_item(next(iter(source.keys())))
    start = getattr(first, "value_tell", getattr(first, "file_tell", 0)) - 8
    end = source.get_item(0x7FE00010).value_tell - 12
    assert stored[start:end] in spliced


def test_spliced_path_taken_for_monochrome(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[bool] = []
    splice = transcode._spliced_native

    def spy(*args: Any) -> bytes | None:
        result = splice(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(transcode, "_spliced_native", spy)
    transcode_file(data("MR_small_RLE.dcm"), ExplicitVRLittleEndian)
    transcode_file(data("SC_rgb_rle_2frame.dcm"), ExplicitVRLittleEndian)  # colour: general
    assert taken == [True, False]


def test_extended_offset_table_not_kept_in_native(tmp_path: Path) -> None:
    # PS3.3 C.7.6.3.1.8: the Extended Offset Table describes encapsulated pixel data only.
    mf = synth.make_multiframe(
        tmp_path / "mf.dcm", frames=10, rows=32, columns=48, transfer_syntax=JPEG2000Lossless
    )
    source = pydicom.dcmread(mf)
    frames = list(generate_frames(source.PixelData, number_of_frames=10))
    source.PixelData, offsets, lengths = encapsulate_extended(frames)
    source.ExtendedOffsetTable, source.ExtendedOffsetTableLengths = offsets, lengths
    path = tmp_path / "eot.dcm"
    source.save_as(path, enforce_file_format=True)

    for target in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        result = read(transcode_file(path, target))
        assert "ExtendedOffsetTable" not in result
        assert "ExtendedOffsetTableLengths" not in result
        assert np.array_equal(result.pixel_array, pixel_array(path))


def test_lossless_ybr_source_keeps_its_samples(tmp_path: Path) -> None:
    # YBR_FULL to RGB rounds: decoding a lossless source must not convert (PS3.3 C.7.6.3.1.2).
    ds = pydicom.dcmread(data("SC_rgb_rle_2frame.dcm"))
    ybr = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL")
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = ybr.tobytes()
    ds.compress(RLELossless, generate_instance_uid=False)
    path = tmp_path / "ybr_rle.dcm"
    ds.save_as(path, enforce_file_format=True)

    result = read(transcode_file(path, ExplicitVRLittleEndian))
    assert result.PhotometricInterpretation == "YBR_FULL"
    assert np.array_equal(pixel_array(result, raw=True), ybr)


def _one_bit_object(frames: int) -> bytes:
    """A 1-bit MONOCHROME2 object whose frames (480 bits each) meet inside no byte boundary."""
    ds = pydicom.dcmread(get_testdata_file("liver_1frame.dcm"))
    samples = np.random.default_rng(frames).integers(0, 2, (frames, 24, 20), dtype=np.uint8)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 24, 20, frames
    ds.PixelData = pack_bits(samples.ravel())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("frames", [1, 3])
@pytest.mark.parametrize("native", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_one_bit_pixels_come_back_packed(frames: int, native: str) -> None:
    # PS3.5 8.1.1: with Bits Allocated 1 the native pixel data is bit-packed, frames included.
    original = _one_bit_object(frames)
    compressed = transcode_file(io.BytesIO(original), HTJ2KLossless)
    back = pydicom.dcmread(io.BytesIO(transcode_file(io.BytesIO(compressed), native)))
    expected = pydicom.dcmread(io.BytesIO(original)).PixelData
    assert back.PixelData[: len(expected)] == expected
    assert len(back.PixelData) == len(expected) + len(expected) % 2
