"""Rendered frames and thumbnails (PS3.18 8.3.5) on pydicom's bundled test files."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.sequence import Sequence

import nubis.dicom.frame_codec as frame_codec
from nubis.dicom.render import (
    RenderOptions,
    parse_render_query,
    parse_wado_uri_query,
    render_frame,
    render_thumbnail,
)
from nubis.errors import BadRequest, NotAcceptable

PNG = RenderOptions(media_type="image/png")


def data(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(reason=f"pydicom test file {name} not available offline")
    return Path(path)


def decode(payload: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(payload))
    image.load()
    return image


def png_array(path: Path, frame: int = 1, **options: Any) -> np.ndarray:
    return np.asarray(decode(render_frame(path, frame, RenderOptions("image/png", **options))))


def modified_copy(tmp_path: Path, name: str, change: Callable[[Dataset], None]) -> Path:
    ds = pydicom.dcmread(data(name))
    change(ds)
    out = tmp_path / f"modified-{name}"
    ds.save_as(out, enforce_file_format=True)
    return out


# -- query parsing -------------------------------------------------------------------------------


def test_parse_defaults() -> None:
    assert parse_render_query({}) == RenderOptions()
    assert parse_render_query({"annotation": "patient", "window": ""}) == RenderOptions()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("40,400,linear", (40.0, 400.0, "LINEAR")),
        ("-600.5, 1500 ,LINEAR-EXACT", (-600.5, 1500.0, "LINEAR_EXACT")),
        ("40,0.5,sigmoid", (40.0, 0.5, "SIGMOID")),
        ("40,400", (40.0, 400.0, "LINEAR")),
    ],
)
def test_parse_window(raw: str, expected: tuple[float, float, str]) -> None:
    assert parse_render_query({"window": raw}).window == expected


def test_parse_viewport_and_quality() -> None:
    options = parse_render_query({"viewport": "512, 256", "quality": "75"})
    assert options.viewport == (512, 256)
    assert options.quality == 75


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"window": "40"}, "window"),
        ({"window": "40,400,linear,x"}, "window"),
        ({"window": "a,400,linear"}, "window center"),
        ({"window": "40,nan,linear"}, "window width"),
        ({"window": "40,400,gamma"}, "window function"),
        ({"window": "40,0.5,linear"}, "window width"),
        ({"window": "40,0,sigmoid"}, "window width"),
        ({"window": "40,-3,linear-exact"}, "window width"),
        ({"viewport": "512"}, "viewport"),
        ({"viewport": "512,256,0,0,10,10"}, "viewport"),
        ({"viewport": "512,x"}, "viewport height"),
        ({"viewport": "0,256"}, "viewport width"),
        ({"viewport": "100000,256"}, "viewport width"),
        ({"viewport": "4097,256"}, "viewport width value 4097 is outside 1..4096"),
        ({"viewport": "256,100000"}, "viewport height value 100000 is outside 1..4096"),
        ({"quality": "0"}, "quality"),
        ({"quality": "101"}, "quality"),
        ({"quality": "high"}, "quality"),
    ],
)
def test_parse_rejects_malformed(params: dict[str, str], named: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_render_query(params)
    assert info.value.reason.startswith(named)


# -- encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "fmt"),
    [("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF"), ("IMAGE/PNG", "PNG")],
)
def test_media_types(media_type: str, fmt: str) -> None:
    image = decode(render_frame(data("CT_small.dcm"), 1, RenderOptions(media_type=media_type)))
    assert image.format == fmt
    assert image.size == (128, 128)


@pytest.mark.parametrize("media_type", ["image/jp2", "video/mp4", "application/dicom", ""])
def test_unsupported_media_type(media_type: str) -> None:
    with pytest.raises(NotAcceptable):
        render_frame(data("CT_small.dcm"), 1, RenderOptions(media_type=media_type))


def test_jpeg_quality_changes_size() -> None:
    path = data("CT_small.dcm")
    low = render_frame(path, 1, RenderOptions(quality=5))
    high = render_frame(path, 1, RenderOptions(quality=100))
    assert len(low) < len(high)


# -- grayscale pipeline --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("MR_small.dcm", (64, 64)),  # signed 16-bit, stored window
        ("MR_small_bigendian.dcm", (64, 64)),
        ("MR_small_jp2klossless.dcm", (64, 64)),
        ("CT_small.dcm", (128, 128)),  # signed 16-bit with rescale, no window
        ("image_dfl.dcm", (512, 512)),  # unsigned 8-bit, deflated
        ("JPGExtended.dcm", (256, 1024)),  # 12-bit lossy JPEG
        ("rtdose.dcm", (10, 10)),  # unsigned 32-bit multi-frame
        ("liver_1frame.dcm", (512, 512)),  # 1-bit
        ("J2K_pixelrep_mismatch.dcm", (512, 512)),
    ],
)
def test_grayscale_sources(name: str, size: tuple[int, int]) -> None:
    image = decode(render_frame(data(name), 1, PNG))
    assert image.mode == "L"
    assert image.size == size
    pixels = np.asarray(image)
    assert pixels.max() > pixels.min()


def test_encoded_twins_render_identically() -> None:
    # The same pixels in native, big endian, RLE, JPEG 2000 and JPEG-LS render the same.
    reference = png_array(data("MR_small.dcm"))
    for twin in ("MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        assert np.array_equal(png_array(data(twin)), reference), twin


def test_min_max_when_no_window() -> None:
    pixels = png_array(data("CT_small.dcm"))
    assert (pixels.min(), pixels.max()) == (0, 255)


def test_narrow_window_saturates_more() -> None:
    path = data("MR_small.dcm")
    wide = png_array(path, window=(1100.0, 4000.0, "LINEAR"))
    narrow = png_array(path, window=(1100.0, 50.0, "LINEAR"))

    def saturated(pixels: np.ndarray) -> int:
        return int(np.count_nonzero((pixels == 0) | (pixels == 255)))

    assert saturated(narrow) > saturated(wide) + 2000
    assert len(np.unique(narrow)) < len(np.unique(wide))


def test_query_window_replaces_stored_window() -> None:
    path = data("MR_small.dcm")  # stored 600/1600
    stored = png_array(path)
    assert np.array_equal(png_array(path, window=(600.0, 1600.0, "LINEAR")), stored)
    assert not np.array_equal(png_array(path, window=(300.0, 200.0, "LINEAR")), stored)
    assert not np.array_equal(png_array(path, window=(600.0, 1600.0, "SIGMOID")), stored)


def test_stored_window_matches_linear_formula() -> None:
    path = data("MR_small.dcm")
    stored = pixel_array(path).astype(np.float64)
    center, width = 600 - 0.5, 1600 - 1  # PS3.3 C.11.2.1.2.1
    expected = np.clip(((stored - center) / width + 0.5) * 255, 0, 255)
    assert np.abs(png_array(path).astype(np.float64) - expected).max() <= 1


def test_modality_lut_applied_before_window(tmp_path: Path) -> None:
    def shift(ds: Dataset) -> None:
        ds.RescaleSlope = 1
        ds.RescaleIntercept = 1000
        ds.WindowCenter = 1600

    shifted = modified_copy(tmp_path, "MR_small.dcm", shift)
    assert np.array_equal(png_array(shifted), png_array(data("MR_small.dcm")))


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    def invert(ds: Dataset) -> None:
        ds.PhotometricInterpretation = "MONOCHROME1"

    mono1 = modified_copy(tmp_path, "MR_small.dcm", invert)
    assert np.array_equal(png_array(mono1), 255 - png_array(data("MR_small.dcm")))


def test_voi_lut_sequence(tmp_path: Path) -> None:
    lut = (np.arange(256, dtype=np.uint16) // 2 + 64).astype(np.uint16)

    def add_lut(ds: Dataset) -> None:
        item = Dataset()
        item.LUTDescriptor = [256, 0, 8]
        item.add_new(0x00283006, "US", lut.tolist())  # LUT Data, US or OW
        ds.VOILUTSequence = Sequence([item])

    path = modified_copy(tmp_path, "image_dfl.dcm", add_lut)
    stored = pydicom.dcmread(data("image_dfl.dcm")).pixel_array
    assert np.array_equal(png_array(path), lut[stored])


def test_per_frame_functional_group_window(tmp_path: Path) -> None:
    source = pydicom.dcmread(data("MR_small.dcm"))
    frames = np.stack([source.pixel_array, source.pixel_array])
    source.set_pixel_data(frames, "MONOCHROME2", 16)
    del source.WindowCenter, source.WindowWidth
    groups = []
    for center, width in ((600, 1600), (1100, 100)):
        voi = Dataset()
        voi.WindowCenter = center
        voi.WindowWidth = width
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        groups.append(group)
    source.PerFrameFunctionalGroupsSequence = Sequence(groups)
    path = tmp_path / "enhanced.dcm"
    source.save_as(path, enforce_file_format=True)

    assert np.array_equal(png_array(path, 1), png_array(data("MR_small.dcm")))
    assert not np.array_equal(png_array(path, 2), png_array(path, 1))


def test_float_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("MR_small.dcm"))
    values = np.linspace(-1.5, 2.5, 64 * 64, dtype=np.float32).reshape(64, 64)
    del ds.PixelData, ds.WindowCenter, ds.WindowWidth, ds.PixelRepresentation, ds.BitsStored
    ds.BitsAllocated = 32
    ds.FloatPixelData = values.tobytes()
    path = tmp_path / "float.dcm"
    ds.save_as(path, enforce_file_format=True)

    pixels = png_array(path)
    assert (pixels[0, 0], pixels[-1, -1]) == (0, 255)
    windowed = png_array(path, window=(0.0, 1.0, "LINEAR_EXACT"))
    assert windowed[0, 0] == 0 and windowed[-1, -1] == 255
    assert np.count_nonzero(windowed == 255) > np.count_nonzero(pixels == 255)


# -- color ---------------------------------------------------------------------------------------


def test_rgb_multiframe_second_frame() -> None:
    path = data("SC_rgb_rle_2frame.dcm")
    image = decode(render_frame(path, 2, PNG))
    assert image.mode == "RGB"
    assert np.array_equal(np.asarray(image), pixel_array(path, index=1))


def test_ybr_full_422_jpeg_rendered_as_rgb() -> None:
    path = data("examples_ybr_color.dcm")
    image = decode(render_frame(path, 3, PNG))
    assert (image.mode, image.size) == ("RGB", (320, 240))
    assert np.array_equal(np.asarray(image), pixel_array(path, index=2))


def test_native_ybr_full_422_rendered_as_rgb() -> None:
    path = data("SC_ybr_full_422_uncompressed.dcm")
    rendered = png_array(path)
    assert rendered.shape == (100, 100, 3)
    assert tuple(rendered[0, 0]) == pytest.approx((255, 0, 0), abs=3)


def test_sixteen_bit_rgb_scaled_to_eight_bits() -> None:
    path = data("SC_rgb_rle_16bit.dcm")
    expected = np.rint(pixel_array(path) * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(png_array(path), expected)


def test_palette_color() -> None:
    path = data("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    image = decode(render_frame(path, 1, PNG))
    assert (image.mode, image.size) == ("RGB", (800, 350))
    expected = apply_color_lut(ds.pixel_array, ds)
    if expected.dtype != np.uint8:
        expected = np.rint(expected * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(np.asarray(image), expected)


def test_window_ignored_for_color() -> None:
    path = data("SC_rgb_rle_2frame.dcm")
    assert np.array_equal(png_array(path, window=(10.0, 5.0, "LINEAR")), png_array(path))


# -- viewport and thumbnails ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "viewport", "size"),
    [
        ("JPGExtended.dcm", (128, 128), (32, 128)),  # 256 x 1024, tall
        ("examples_palette.dcm", (400, 400), (400, 175)),  # 800 x 350, wide
        ("MR_small.dcm", (200, 100), (100, 100)),  # scaled up to fit
        ("CT_small.dcm", (128, 128), (128, 128)),
    ],
)
def test_viewport_keeps_aspect_ratio(
    name: str, viewport: tuple[int, int], size: tuple[int, int]
) -> None:
    image = decode(render_frame(data(name), 1, RenderOptions(viewport=viewport)))
    assert image.size == size


def test_thumbnail_default_viewport_and_middle_frame() -> None:
    path = data("rtdose.dcm")  # 15 frames of 10 x 10
    thumbnail = decode(render_thumbnail(path, PNG))
    assert thumbnail.size == (128, 128)
    middle = render_frame(path, 8, RenderOptions("image/png", viewport=(128, 128)))
    assert np.array_equal(np.asarray(thumbnail), np.asarray(decode(middle)))


def test_thumbnail_explicit_viewport() -> None:
    image = decode(render_thumbnail(data("examples_palette.dcm"), RenderOptions(viewport=(64, 64))))
    assert image.size == (64, 28)


# -- frames and errors ---------------------------------------------------------------------------


def test_only_requested_frame_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    indexes: list[int | None] = []

    def spy(*args: Any, **kwargs: Any) -> np.ndarray:
        indexes.append(kwargs.get("index"))
        return pixel_array(*args, **kwargs)

    monkeypatch.setattr(frame_codec, "pixel_array", spy)
    render_frame(data("rtdose_rle.dcm"), 12, PNG)
    assert indexes == [11]


@pytest.mark.parametrize("frame", [0, -1, 16, 1000])
def test_frame_out_of_range(frame: int) -> None:
    with pytest.raises(BadRequest):
        render_frame(data("rtdose.dcm"), frame, PNG)


def test_single_frame_has_only_frame_one() -> None:
    with pytest.raises(BadRequest):
        render_frame(data("CT_small.dcm"), 2, PNG)


@pytest.mark.parametrize("render", [render_frame, render_thumbnail])
def test_no_pixel_data(render: Callable[..., bytes]) -> None:
    path = data("rtplan.dcm")
    args = (path, 1, PNG) if render is render_frame else (path, PNG)
    with pytest.raises(NotAcceptable, match="instance has no pixel data"):
        render(*args)


def test_not_a_dicom_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(NotAcceptable):
        render_frame(path, 1, PNG)


def test_undecodable_pixel_data(tmp_path: Path) -> None:
    ds = pydicom.dcmread(data("MR_small_jp2klossless.dcm"))
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"garbage!" * 50])
    path = tmp_path / "broken.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(NotAcceptable, match="cannot be decoded"):
        render_frame(path, 1, PNG)


# -- WADO-URI ------------------------------------------------------------------------------------


def test_wado_uri_parameters() -> None:
    options = parse_wado_uri_query(
        {
            "rows": "64",
            "columns": "32",
            "windowCenter": "40",
            "windowWidth": "400",
            "imageQuality": "80",
        }
    )
    assert options == RenderOptions(window=(40.0, 400.0, "LINEAR"), viewport=(32, 64), quality=80)
    assert parse_wado_uri_query({"requestType": "WADO"}) == RenderOptions()


@pytest.mark.parametrize(
    ("params", "size"),
    [({"rows": "64"}, (16, 64)), ({"columns": "64"}, (64, 256)), ({}, (256, 1024))],
)
def test_wado_uri_single_dimension_keeps_aspect(
    params: dict[str, str], size: tuple[int, int]
) -> None:
    options = parse_wado_uri_query(params)
    assert decode(render_frame(data("JPGExtended.dcm"), 1, options)).size == size


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"rows": "x"}, "rows"),
        ({"columns": "0"}, "columns"),
        ({"columns": "4097"}, "columns value 4097 is outside 1..4096"),
        ({"rows": "100000"}, "rows value 100000 is outside 1..4096"),
        ({"windowCenter": "40"}, "windowCenter"),
        ({"windowCenter": "a", "windowWidth": "400"}, "windowCenter"),
        ({"windowCenter": "40", "windowWidth": "0.5"}, "windowWidth"),
        ({"imageQuality": "0"}, "imageQuality"),
        ({"region": "0.1,0.1,0.5,0.5"}, "region"),
    ],
)
def test_wado_uri_rejects_malformed(params: dict[str, str], named: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_wado_uri_query(params)
    assert info.value.reason.startswith(named)
