"""Lossless re-encoding for a tier's compression (nubis.dicom.recompress), on real files.

pydicom's bundled test files with uncompressed pixel data (8 and 16 bits, signed, palette,
RGB, implicit VR, a padded Pixel Data) and multi-frame objects (synthetic 16-bit grayscale,
8 and 16-bit RGB decoded from pydicom's RLE files) are re-encoded into every lossless codec
this installation encodes, and each result is decoded here again, independently of the checks
recompress makes itself. Objects that cannot come back exactly are refused with a reason.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import iter_pixels
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from nubis.dicom.recompress import NotRecompressible, compress_verified
from nubis.dicom.syntaxes import SUPPORTED_TARGETS
from nubis.dicom.transcode import transcode_file
from nubis.tiers.rules import LOSSLESS_CODECS
from nubis.tools.synth import make_multiframe

NATIVE_FILES = [
    "CT_small.dcm",  # 16-bit signed
    "MR_small.dcm",  # 16-bit signed
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "MR_small_padded.dcm",  # Pixel Data with a trailing pad
    "examples_overlay.dcm",  # 16-bit unsigned
    "examples_palette.dcm",  # 8-bit PALETTE COLOR
    "examples_rgb_color.dcm",  # 8-bit RGB
    "SC_rgb_jpeg_dcmd.dcm",  # 8-bit RGB, Implicit VR (decompressed by dcmtk)
]


def _codec(name: str) -> object:
    uid = LOSSLESS_CODECS[name]
    return pytest.param(
        uid,
        id=name,
        marks=pytest.mark.skipif(
            uid not in SUPPORTED_TARGETS,
            reason=f"no {name} encoder in this installation (the codecs part of issue 11)",
        ),
    )


CODECS = [_codec(name) for name in ("j2k", "rle", "htj2k", "jpegls")]


def _frames(data: bytes) -> list[np.ndarray]:
    return list(iter_pixels(io.BytesIO(data), raw=True))


def _decoded_like(data: bytes, original: bytes) -> None:
    want, got = _frames(original), _frames(data)
    assert len(got) == len(want)
    for a, b in zip(want, got, strict=True):
        assert (a.dtype, a.shape) == (b.dtype, b.shape)
        assert np.array_equal(a, b)


def _native(path: Path, out: Path) -> bytes:
    """A multi-frame file of pydicom's in Explicit VR Little Endian (as a modality sends it)."""
    out.write_bytes(transcode_file(path, ExplicitVRLittleEndian))
    return out.read_bytes()


@pytest.fixture(scope="module")
def multiframes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("mf")
    grey = make_multiframe(folder / "grey.dcm", frames=6, rows=64, columns=48, seed=3)
    return {
        "grey16x6": grey.read_bytes(),
        "rgb8x2": _native(Path(get_testdata_file("SC_rgb_rle_2frame.dcm")), folder / "rgb8.dcm"),
        "rgb16x2": _native(
            Path(get_testdata_file("SC_rgb_rle_16bit_2frame.dcm")), folder / "rgb16.dcm"
        ),
    }


@pytest.mark.parametrize("target", CODECS)
@pytest.mark.parametrize("name", NATIVE_FILES)
def test_native_files_come_back_pixel_exact(name: str, target: str) -> None:
    original = Path(get_testdata_file(name)).read_bytes()
    source = pydicom.dcmread(io.BytesIO(original))
    new = compress_verified(io.BytesIO(original), target)
    compressed = pydicom.dcmread(io.BytesIO(new))
    assert compressed.file_meta.TransferSyntaxUID == target
    assert compressed.SOPInstanceUID == source.SOPInstanceUID
    _decoded_like(new, original)
    # What a client asking for the original transfer syntax gets.
    back = transcode_file(io.BytesIO(new), source.file_meta.TransferSyntaxUID)
    _decoded_like(back, original)


@pytest.mark.parametrize("target", CODECS)
@pytest.mark.parametrize("name", ["grey16x6", "rgb8x2", "rgb16x2"])
def test_multiframe_objects_come_back_pixel_exact(
    multiframes: dict[str, bytes], name: str, target: str
) -> None:
    original = multiframes[name]
    new = compress_verified(io.BytesIO(original), target)
    assert len(_frames(new)) == len(_frames(original)) > 1
    _decoded_like(new, original)
    _decoded_like(transcode_file(io.BytesIO(new), ExplicitVRLittleEndian), original)


def _edited(name: str, edit: object) -> bytes:
    ds = pydicom.dcmread(get_testdata_file(name))
    edit(ds)  # type: ignore[operator]
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _beyond_bits_stored(ds: pydicom.Dataset) -> None:
    """12 bits stored in 16, one sample with a bit set above them: an encoder of 12-bit
    samples would drop it."""
    pixels = ds.pixel_array.astype(np.uint16) & 0x0FFF
    pixels[0, 0] = 0x8001
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
    ds.PixelData = pixels.tobytes()


def _not_sign_extended(ds: pydicom.Dataset) -> None:
    """Signed 12 of 16 bits whose words do not repeat the sign above bit 11: a decoder gives
    the sign-extended sample, not the word stored."""
    samples = ds.pixel_array.astype(np.int16).clip(-2048, 2047)
    samples[0, 0] = -5
    words = samples.view(np.uint16) & 0x0FFF
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = words.tobytes()


@pytest.mark.parametrize(
    ("original", "reason"),
    [
        (_edited("MR_small.dcm", _beyond_bits_stored), "bits above Bits Stored"),
        (_edited("CT_small.dcm", _not_sign_extended), "bits above Bits Stored"),
        (Path(get_testdata_file("test-SR.dcm")).read_bytes(), "no pixel data"),
        (Path(get_testdata_file("rtdose.dcm")).read_bytes(), "cannot transcode"),  # 32 bits
        (Path(get_testdata_file("JPGExtended.dcm")).read_bytes(), "not stored losslessly"),
        (b"not DICOM at all", "cannot be read"),
    ],
    ids=[
        "beyond-bits-stored",
        "not-sign-extended",
        "no-pixels",
        "32-bit",
        "lossy",
        "junk",
    ],
)
def test_what_cannot_come_back_exactly_is_refused_with_a_reason(
    original: bytes, reason: str
) -> None:
    with pytest.raises(NotRecompressible, match=reason):
        compress_verified(io.BytesIO(original), LOSSLESS_CODECS["j2k"])


def test_one_bit_samples_compress_and_come_back_packed() -> None:
    # PS3.5 8.1.1: 1-bit samples are bit-packed when native. HTJ2K codes them exactly, and
    # converting the result back to the syntax it arrived in must pack them again (it once
    # gave a byte per sample, which the convert-back check refused).
    path = get_testdata_file("liver_1frame.dcm")
    compressed = compress_verified(Path(path), LOSSLESS_CODECS["htj2k"])
    back = pydicom.dcmread(
        io.BytesIO(transcode_file(io.BytesIO(compressed), ExplicitVRLittleEndian))
    )
    assert back.PixelData == pydicom.dcmread(path).PixelData


def test_jpeg_ls_refuses_one_bit_samples() -> None:
    original = Path(get_testdata_file("liver_1frame.dcm")).read_bytes()
    with pytest.raises(NotRecompressible, match=r"cannot be converted|encoder"):
        compress_verified(io.BytesIO(original), LOSSLESS_CODECS["jpegls"])


def _relabelled(ds: pydicom.Dataset) -> None:
    ds.PhotometricInterpretation = "YBR_FULL"  # the same samples, meant as other colours


def _forgetful(ds: pydicom.Dataset) -> None:
    del ds.PatientName


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_relabelled, r"\(0028,0004\) PhotometricInterpretation"),
        (_forgetful, r"\(0010,0010\) PatientName"),
    ],
)
def test_a_codec_that_changes_another_attribute_is_refused(
    monkeypatch: pytest.MonkeyPatch, edit: object, reason: str
) -> None:
    # A codec that changes what the pixels mean, or loses an attribute: a fault no real file
    # causes on demand, so the conversion is wrapped to make it.
    import nubis.dicom.recompress as recompress

    def faulty(source: io.BytesIO, target: str) -> bytes:
        ds = pydicom.dcmread(io.BytesIO(transcode_file(source, target)))
        edit(ds)  # type: ignore[operator]
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    monkeypatch.setattr(recompress, "transcode_file", faulty)
    original = Path(get_testdata_file("examples_rgb_color.dcm")).read_bytes()
    with pytest.raises(NotRecompressible, match=f"the compressed file changes {reason}"):
        compress_verified(io.BytesIO(original), LOSSLESS_CODECS["htj2k"])


def _ybr_full(ds: pydicom.Dataset) -> None:
    ds.PhotometricInterpretation = "YBR_FULL"


@pytest.mark.parametrize("target", CODECS)
def test_ycbcr_keeps_its_samples(target: str) -> None:
    # Lossless YCbCr is kept as YCbCr: converting it to RGB would not give the samples back.
    original = _edited("examples_rgb_color.dcm", _ybr_full)
    new = compress_verified(io.BytesIO(original), target)
    assert pydicom.dcmread(io.BytesIO(new)).PhotometricInterpretation == "YBR_FULL"
    _decoded_like(new, original)
    back = pydicom.dcmread(io.BytesIO(transcode_file(io.BytesIO(new), ExplicitVRLittleEndian)))
    assert back.PhotometricInterpretation == "YBR_FULL"
    assert back.PixelData == pydicom.dcmread(io.BytesIO(original)).PixelData


def test_implicit_vr_originals_come_back_in_implicit_vr() -> None:
    original = Path(get_testdata_file("MR_small_implicit.dcm")).read_bytes()
    new = compress_verified(io.BytesIO(original), LOSSLESS_CODECS["j2k"])
    back = pydicom.dcmread(io.BytesIO(transcode_file(io.BytesIO(new), ImplicitVRLittleEndian)))
    assert back.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    source = pydicom.dcmread(io.BytesIO(original))
    assert back.PixelData == source.PixelData


def _signed_12_bits(ds: pydicom.Dataset) -> None:
    samples = ds.pixel_array.astype(np.int16).clip(-2048, 2047)
    samples[0, 0] = -5  # stored sign-extended, as PS3.5 8.1.1 has it
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = samples.tobytes()


def test_signed_samples_below_bits_allocated_come_back_exactly() -> None:
    original = _edited("CT_small.dcm", _signed_12_bits)
    new = compress_verified(io.BytesIO(original), LOSSLESS_CODECS["j2k"])
    assert _frames(new)[0][0, 0] == -5
    back = transcode_file(io.BytesIO(new), ExplicitVRLittleEndian)
    assert (
        pydicom.dcmread(io.BytesIO(back)).PixelData
        == pydicom.dcmread(io.BytesIO(original)).PixelData
    )
