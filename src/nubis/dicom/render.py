"""Rendered and thumbnail images of DICOM frames (PS3.18 8.3.5 and 10.4.1.1.3, WADO-URI 9).

The pipeline follows the grayscale and color standard display pipelines of PS3.4 Annex N as far
as the instance alone allows: Modality LUT, then VOI (query window, stored window, VOI LUT
Sequence, or the frame's value range), MONOCHROME1 inversion, Palette Color expansion, and
reduction to 8 bits per sample. The result is encoded with Pillow as JPEG, PNG or GIF
(PS3.18 8.7.4, Table 8.7.4-1 rendered media types).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import SupportsFloat

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing

from nubis.dicom.frame_codec import frame_array, frame_index, number_of_frames
from nubis.dicom.pixel_checks import stored_data_errors
from nubis.dicom.syntaxes import Source, read_header
from nubis.errors import BadRequest, NotAcceptable

__all__ = [
    "RENDERED_MEDIA_TYPES",
    "RenderOptions",
    "parse_render_query",
    "parse_wado_uri_query",
    "render_frame",
    "render_thumbnail",
]

#: Rendered media types this module produces, mapped to Pillow format names.
RENDERED_MEDIA_TYPES: Mapping[str, str] = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/gif": "GIF",
}

_VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})

# A viewport is an allocation request from a query string: a 512x512 image fitted into 8192x8192
# cost 2.4 s of CPU and 65 MB per grayscale PNG, three times that in color. 4096 per side (at
# most 16.7 megapixels out) is above any viewer's canvas; PS3.18 8.2.2 answers a viewport the
# server does not support with 400.
_MAX_VIEWPORT = 4096

_THUMBNAIL_VIEWPORT = (128, 128)
_DEFAULT_JPEG_QUALITY = 90

# Attributes of the pixel value pipeline, taken from the top level of the data set and then
# overridden by the Shared and Per-frame Functional Groups of enhanced multi-frame objects.
_PIPELINE_KEYWORDS = (
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
)
_FUNCTIONAL_GROUP_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


@dataclass(frozen=True)
class RenderOptions:
    """How to render a frame (PS3.18 8.3.5.1 rendered query parameters).

    Attributes
    ----------
    media_type : str
        ``image/jpeg``, ``image/png`` or ``image/gif``.
    window : tuple[float, float, str] | None
        ``(center, width, function)`` with function ``LINEAR``, ``LINEAR_EXACT`` or ``SIGMOID``
        (PS3.3 C.11.2.1.2); ``None`` uses the instance's own VOI.
    viewport : tuple[int, int] | None
        ``(vw, vh)``: the image is scaled to fit inside, keeping its aspect ratio.
    quality : int | None
        JPEG quality 1..100; ignored for lossless media types.
    """

    media_type: str = "image/jpeg"
    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    quality: int | None = None


def _numbers(name: str, raw: str, count: tuple[int, ...]) -> list[str]:
    parts = [part.strip() for part in raw.split(",")]
    if len(parts) not in count or any(part == "" for part in parts):
        expected = " or ".join(str(n) for n in count)
        raise BadRequest(f"{name} must have {expected} comma-separated values, got {raw!r}")
    return parts


def _float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} value {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} value {raw!r} is not a finite number")
    return value


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} value {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} value {value} is outside {low}..{high}")
    return value


def _parse_window(raw: str) -> tuple[float, float, str]:
    parts = _numbers("window", raw, (2, 3))
    center = _float("window center", parts[0])
    width = _float("window width", parts[1])
    # PS3.18 spells the functions in lower case with hyphens (linear-exact); PS3.3 uses the
    # defined terms; accept both.
    function = parts[2].upper().replace("-", "_") if len(parts) == 3 else "LINEAR"
    if function not in _VOI_FUNCTIONS:
        raise BadRequest(f"window function {parts[2]!r} is not linear, linear-exact or sigmoid")
    # PS3.3 C.11.2.1.2.1 and C.11.2.1.3: LINEAR needs width >= 1, the others width > 0.
    if (function == "LINEAR" and width < 1) or width <= 0:
        raise BadRequest(f"window width {parts[1]} is not valid for function {function}")
    return center, width, function


def _parse_viewport(raw: str) -> tuple[int, int]:
    parts = _numbers("viewport", raw, (2,))
    return (
        _int("viewport width", parts[0], 1, _MAX_VIEWPORT),
        _int("viewport height", parts[1], 1, _MAX_VIEWPORT),
    )


def parse_render_query(params: Mapping[str, str]) -> RenderOptions:
    """Parse the rendered-resource query parameters of PS3.18 8.3.5.1.

    Parameters
    ----------
    params : Mapping[str, str]
        Query parameters. ``window=center,width,function`` (function ``linear``,
        ``linear-exact`` or ``sigmoid``, case-insensitive, default ``linear``),
        ``viewport=vw,vh`` and ``quality=1..100`` are read; other keys are ignored here.

    Returns
    -------
    RenderOptions
        Options with the default media type; the caller sets it from the Accept header.

    Raises
    ------
    BadRequest
        If a parameter is malformed; the reason names the parameter.
    """
    window = _parse_window(params["window"]) if params.get("window") else None
    viewport = _parse_viewport(params["viewport"]) if params.get("viewport") else None
    quality = _int("quality", params["quality"].strip(), 1, 100) if params.get("quality") else None
    return RenderOptions(window=window, viewport=viewport, quality=quality)


def parse_wado_uri_query(params: Mapping[str, str]) -> RenderOptions:
    """Parse the image presentation parameters of a WADO-URI request (PS3.18 9.4.1).

    Parameters
    ----------
    params : Mapping[str, str]
        Query parameters. ``rows`` and ``columns`` are maxima kept in the image's aspect ratio
        (9.4.1.2.4-5, either may be absent), ``windowCenter`` and ``windowWidth`` come together
        as a LINEAR window (9.4.1.2.8), ``imageQuality`` is 1..100 (9.4.1.2.7). ``contentType``,
        ``frameNumber`` and the identifying UIDs are left to the caller.

    Returns
    -------
    RenderOptions
        Options with the default media type.

    Raises
    ------
    BadRequest
        If a parameter is malformed or ``region`` (9.4.1.2.6) is requested; the reason names
        the parameter.
    """
    if params.get("region"):
        raise BadRequest("region is not supported")
    rows = _int("rows", params["rows"].strip(), 1, _MAX_VIEWPORT) if params.get("rows") else None
    columns = (
        _int("columns", params["columns"].strip(), 1, _MAX_VIEWPORT)
        if params.get("columns")
        else None
    )
    viewport = None
    if rows is not None or columns is not None:
        # A missing dimension is unconstrained: fitting into the cap derives it from the other.
        viewport = (columns or _MAX_VIEWPORT, rows or _MAX_VIEWPORT)
    center, width = params.get("windowCenter"), params.get("windowWidth")
    window = None
    if center or width:
        if not (center and width):
            raise BadRequest("windowCenter and windowWidth must be given together")
        window_width = _float("windowWidth", width.strip())
        if window_width < 1:
            # PS3.3 C.11.2.1.2.1: a LINEAR window needs a width of at least 1.
            raise BadRequest(f"windowWidth value {width!r} is below 1")
        window = (_float("windowCenter", center.strip()), window_width, "LINEAR")
    quality = (
        _int("imageQuality", params["imageQuality"].strip(), 1, 100)
        if params.get("imageQuality")
        else None
    )
    return RenderOptions(window=window, viewport=viewport, quality=quality)


def _pillow_format(media_type: str) -> str:
    normalized = media_type.split(";", 1)[0].strip().lower()
    try:
        return RENDERED_MEDIA_TYPES[normalized]
    except KeyError:
        raise NotAcceptable(f"rendered media type {media_type!r} is not supported") from None


def _frame_attributes(header: Dataset, index: int) -> Dataset:
    """Collect the pixel pipeline attributes that apply to frame `index`."""
    attrs = Dataset()
    if hasattr(header, "file_meta"):
        # apply_voi/apply_modality_lut read the byte order of OW LUT data from here.
        attrs.file_meta = header.file_meta
    for keyword in _PIPELINE_KEYWORDS:
        if keyword in header:
            attrs[keyword] = header[keyword]
    groups: list[Dataset] = []
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    for group in groups:
        for macro in _FUNCTIONAL_GROUP_MACROS:
            items = group.get(macro)
            if items:
                for elem in items[0]:
                    attrs[elem.tag] = elem
    return attrs


def _first(value: object) -> float:
    """A number, or the first of several (a multi-valued DS / IS)."""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        value = value[0]
    if isinstance(value, str | bytes | SupportsFloat):
        return float(value)
    raise TypeError(f"not a number: {type(value).__name__}")


def _apply_window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """Window into 0..255 with pydicom's PS3.3 C.11.2.1.2 implementation."""
    # An unsigned 8-bit output range without rescale makes apply_windowing emit 0..255 directly.
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored = 8
    voi.PixelRepresentation = 0
    voi.WindowCenter = center
    voi.WindowWidth = width
    voi.VOILUTFunction = function
    return apply_windowing(values, voi)


def _stored_window(attrs: Dataset) -> tuple[float, float, str] | None:
    if "WindowCenter" not in attrs or "WindowWidth" not in attrs:
        return None
    try:
        center = _first(attrs.WindowCenter)
        width = _first(attrs.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(attrs.get("VOILUTFunction") or "LINEAR").upper()
    if function not in _VOI_FUNCTIONS or not (math.isfinite(center) and math.isfinite(width)):
        return None
    if (function == "LINEAR" and width < 1) or width <= 0:
        # A stored window the standard forbids is ignored rather than failing the render.
        return None
    return center, width, function


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.float64)
    return (values.astype(np.float64) - low) * (255.0 / (high - low))


def _voi_lut(values: np.ndarray, attrs: Dataset) -> np.ndarray | None:
    lut = attrs.get("VOILUTSequence")
    if not lut or "LUTDescriptor" not in lut[0] or "LUTData" not in lut[0]:
        return None
    depth = int(lut[0].LUTDescriptor[2])
    if not np.issubdtype(values.dtype, np.integer):
        # The LUT is indexed by integer stored values (PS3.3 C.11.2.1.1); a rescale with an
        # integral slope/intercept still yields integral floats.
        values = np.rint(values).astype(np.int64)
    try:
        mapped = apply_voi(values, attrs)
    except (NotImplementedError, ValueError, AttributeError):
        return None
    return _stretch(mapped, 0, 2**depth - 1)


def _grayscale(
    arr: np.ndarray, attrs: Dataset, window: tuple[float, float, str] | None
) -> np.ndarray:
    values = apply_modality_lut(arr, attrs)
    if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    chosen = window or _stored_window(attrs)
    out = _apply_window(values, *chosen) if chosen is not None else _voi_lut(values, attrs)
    if out is None:
        out = _stretch(values, float(values.min()), float(values.max()))
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if attrs.get("PhotometricInterpretation") == "MONOCHROME1":
        # MONOCHROME1: minimum value is displayed white (PS3.3 C.7.6.3.1.2).
        out = 255 - out
    return out


def _color_to_8bit(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    if np.issubdtype(rgb.dtype, np.floating):
        return np.clip(np.rint(_stretch(rgb, float(rgb.min()), float(rgb.max()))), 0, 255).astype(
            np.uint8
        )
    return np.clip(np.rint(rgb * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)


def _to_display(
    arr: np.ndarray, header: Dataset, attrs: Dataset, options: RenderOptions
) -> Image.Image:
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if arr.ndim == 2 and photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, header)
        except (ValueError, AttributeError, IndexError) as exc:
            raise NotAcceptable("palette color lookup table cannot be applied") from exc
        depth = 16 if rgb.dtype.itemsize > 1 else 8
        return Image.fromarray(_color_to_8bit(rgb, depth), mode="RGB")
    if arr.ndim == 2:
        return Image.fromarray(_grayscale(arr, attrs, options.window), mode="L")
    if arr.ndim == 3 and arr.shape[2] == 3:
        # frame_array(raw=False) already converted YBR_FULL/YBR_FULL_422 to RGB, and the
        # JPEG 2000 decoder undoes YBR_RCT/YBR_ICT; a window applies to grayscale only.
        bits = int(header.get("BitsStored") or header.get("BitsAllocated") or 8)
        return Image.fromarray(_color_to_8bit(arr, bits), mode="RGB")
    raise NotAcceptable(f"photometric interpretation {photometric} cannot be rendered")


def _fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    width, height = image.size
    scale = min(viewport[0] / width, viewport[1] / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _encode(image: Image.Image, pillow_format: str, quality: int | None) -> bytes:
    buffer = io.BytesIO()
    if pillow_format == "JPEG":
        image.save(buffer, "JPEG", quality=quality or _DEFAULT_JPEG_QUALITY)
    else:
        image.save(buffer, pillow_format)
    return buffer.getvalue()


def _render(path: Source, frame_number: int | None, options: RenderOptions) -> bytes:
    pillow_format = _pillow_format(options.media_type)
    header = read_header(path)
    if "Rows" not in header and "Columns" not in header:
        raise NotAcceptable("instance has no pixel data")
    if frame_number is None:
        frame_number = (number_of_frames(header) + 1) // 2
    index = frame_index(header, frame_number)
    arr = frame_array(path, header, index, raw=False)
    image = _to_display(arr, header, _frame_attributes(header, index), options)
    if options.viewport is not None:
        image = _fit(image, options.viewport)
    return _encode(image, pillow_format, options.quality)


@stored_data_errors("rendered")
def render_frame(path: Source, frame_number: int, options: RenderOptions) -> bytes:
    """Render one frame as a consumer image (PS3.18 8.3.5 rendered resources, 9 WADO-URI).

    Only the requested frame is decoded. Grayscale frames go through the Modality LUT (or
    Rescale Slope/Intercept), then the VOI: `options.window` if given, else the first stored
    Window Center/Width (per frame for enhanced objects), else the VOI LUT Sequence, else the
    frame's own value range; MONOCHROME1 is inverted. Palette Color is expanded and YCbCr
    converted to RGB. Output is 8 bits per sample.

    Parameters
    ----------
    path : Path or binary file
        A DICOM PS3.10 file, or a seekable file object over one.
    frame_number : int
        1-based frame number.
    options : RenderOptions
        Media type, window, viewport and quality.

    Returns
    -------
    bytes
        The encoded image in ``options.media_type``.

    Raises
    ------
    BadRequest
        If `frame_number` is out of range.
    NotAcceptable
        If the media type is not supported, the instance has no pixel data, or its pixel data
        cannot be decoded or rendered.
    """
    return _render(path, frame_number, options)


@stored_data_errors("rendered")
def render_thumbnail(path: Source, options: RenderOptions) -> bytes:
    """Render the middle frame as a thumbnail (PS3.18 10.4.1.1.3 ``/thumbnail`` resources).

    Parameters
    ----------
    path : Path or binary file
        A DICOM PS3.10 file, or a seekable file object over one.
    options : RenderOptions
        As for :func:`render_frame`; the viewport defaults to 128x128.

    Returns
    -------
    bytes
        The encoded image in ``options.media_type``.

    Raises
    ------
    NotAcceptable
        If the media type is not supported or the instance has no renderable pixel data.
    """
    if options.viewport is None:
        options = replace(options, viewport=_THUMBNAIL_VIEWPORT)
    return _render(path, None, options)
