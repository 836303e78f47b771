"""One frame of a stored instance, decoded or encoded (PS3.18 8.3.5.1 frames, 8.7.3.5).

Frames are decoded one at a time through :func:`pydicom.pixels.pixel_array` with ``index`` so that
serving frame 1,000 of a 2,000-frame object never decodes the other 1,999.

Decoding a lossless source keeps its Photometric Interpretation (YBR_FULL stays YBR_FULL: the
conversion to RGB is not reversible); a lossy source is converted to RGB as viewers expect.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.pixels import get_encoder, pack_bits, pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from nubis.dicom.pixel_checks import check_pixel_module, stored_data_errors
from nubis.dicom.syntaxes import (
    NATIVE_SOURCES,
    OWN_ENCODERS,
    UNCOMPRESSED_SYNTAXES,
    Source,
    can_transcode,
    read_header,
    refusal,
    rewound,
    transfer_syntax_of,
    uid_text,
)
from nubis.errors import BadRequest, NotAcceptable

__all__ = [
    "decode_frame",
    "encode_frame",
    "frame_array",
    "frame_index",
    "native_frame_bytes",
    "number_of_frames",
]


def number_of_frames(header: Dataset) -> int:
    """Return (0028,0008) Number of Frames, treating absent or empty values as one frame.

    Parameters
    ----------
    header : pydicom.dataset.Dataset
        The instance's data set (pixel data not needed).

    Returns
    -------
    int
        The number of frames, at least 1.
    """
    value = header.get("NumberOfFrames")
    try:
        return max(int(value), 1) if value not in (None, "") else 1
    except (TypeError, ValueError):
        return 1


def frame_index(header: Dataset, frame_number: int) -> int:
    """Check a 1-based frame number (PS3.18 8.3.5.1 ``/frames/{frameList}``) and make it 0-based.

    Parameters
    ----------
    header : pydicom.dataset.Dataset
        The instance's data set (pixel data not needed).
    frame_number : int
        Requested frame, counting from 1.

    Returns
    -------
    int
        The 0-based frame index.

    Raises
    ------
    BadRequest
        If `frame_number` is below 1 or beyond (0028,0008) Number of Frames.
    """
    total = number_of_frames(header)
    if not 1 <= frame_number <= total:
        raise BadRequest(f"frame {frame_number} is out of range; the instance has {total} frame(s)")
    return frame_number - 1


def _has_image(header: Dataset) -> bool:
    # Without either, the object is no image (an SR, an RT Plan); with one, a broken one.
    return "Rows" in header or "Columns" in header


def frame_array(path: Source, header: Dataset, index: int, *, raw: bool = False) -> np.ndarray:
    """Decode one frame of the instance at `path`, leaving all other frames untouched.

    Parameters
    ----------
    path : Path or binary file
        A DICOM PS3.10 file, or a seekable file object over one (see :data:`Source`).
    header : pydicom.dataset.Dataset
        Its data set as returned by :func:`read_header`.
    index : int
        0-based frame index, already range-checked (see :func:`frame_index`).
    raw : bool
        Passed to :func:`pydicom.pixels.pixel_array`: ``False`` converts YCbCr to RGB.

    Returns
    -------
    numpy.ndarray
        ``(rows, columns)`` or ``(rows, columns, samples)`` in the system byte order.

    Raises
    ------
    NotAcceptable
        If the instance has no pixel data, its pixel module is unusable (the reason names the
        attribute, :func:`~nubis.dicom.pixel_checks.check_pixel_module`), or its pixel data
        cannot be decoded here.
    """
    if not _has_image(header):
        raise NotAcceptable("instance has no pixel data")
    check_pixel_module(header)
    source_ts = transfer_syntax_of(header)
    try:
        if source_ts == DeflatedExplicitVRLittleEndian:
            # Deflate has no random access: the whole data set is inflated anyway.
            return pixel_array(dcmread(rewound(path)), index=index, raw=raw)
        return pixel_array(rewound(path), index=index, raw=raw)
    except AttributeError as exc:
        raise NotAcceptable("instance has no pixel data") from exc
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        raise NotAcceptable(
            f"pixel data in transfer syntax {uid_text(source_ts)} cannot be decoded"
        ) from exc


def _little_endian_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def native_frame_bytes(arr: np.ndarray, header: Dataset) -> bytes:
    """Serialise a ``raw=True`` frame exactly as native little endian Pixel Data stores it."""
    if header.get("BitsAllocated") == 1:
        return pack_bits(arr, pad=False)
    if arr.ndim == 3:
        if header.get("PhotometricInterpretation") == "YBR_FULL_422":
            # pydicom always removes the 4:2:2 subsampling; undo it (PS3.3 C.7.6.3.1.2:
            # Y1 Y2 Cb Cr per pair of pixels), which is exact since the chroma was duplicated.
            pairs = arr.reshape(-1, 2, 3)
            packed = np.stack(
                [pairs[:, 0, 0], pairs[:, 1, 0], pairs[:, 0, 1], pairs[:, 0, 2]], axis=1
            )
            return _little_endian_bytes(packed)
        if header.get("PlanarConfiguration") == 1:
            arr = arr.transpose(2, 0, 1)
    return _little_endian_bytes(arr)


@stored_data_errors("decoded")
def decode_frame(path: Source, frame_number: int) -> bytes:
    """Return one frame as uncompressed little endian bytes (PS3.18 8.7.3.3.2 octet-stream).

    The bytes are those the frame has in :func:`transcode_file` ``(path, "1.2.840.10008.1.2.1")``:
    for a native source the stored frame (byte-swapped if big endian), for an encapsulated source
    the decoded frame with color-by-pixel samples and YCbCr converted to RGB, as
    :meth:`pydicom.dataset.Dataset.decompress` does.

    Parameters
    ----------
    path : Path or binary file
        A DICOM PS3.10 file, or a seekable file object over one (see :data:`Source`).
    frame_number : int
        1-based frame number.

    Returns
    -------
    bytes
        The frame's pixel data; multi-byte samples are little endian.

    Raises
    ------
    BadRequest
        If `frame_number` is out of range.
    NotAcceptable
        If the instance has no pixel data or it cannot be decoded.
    """
    header = read_header(path)
    index = frame_index(header, frame_number)
    if transfer_syntax_of(header) in NATIVE_SOURCES:
        return native_frame_bytes(frame_array(path, header, index, raw=True), header)
    return _little_endian_bytes(frame_array(path, header, index, raw=False))


def _pixel_options(header: Dataset, arr: np.ndarray) -> dict[str, Any]:
    """Describe a decoded frame for :meth:`pydicom.pixels.encoders.base.Encoder.encode`."""
    samples = arr.shape[2] if arr.ndim == 3 else 1
    photometric = str(header.get("PhotometricInterpretation", "MONOCHROME2"))
    if samples > 1 and photometric.startswith("YBR"):
        # frame_array(raw=False) has already converted YCbCr to RGB.
        photometric = "RGB"
    return {
        "rows": arr.shape[0],
        "columns": arr.shape[1],
        "samples_per_pixel": samples,
        "number_of_frames": 1,
        "bits_allocated": int(header.BitsAllocated),
        "bits_stored": int(header.get("BitsStored", header.BitsAllocated)),
        "pixel_representation": int(header.get("PixelRepresentation", 0)),
        "photometric_interpretation": photometric,
        "planar_configuration": 0,
    }


@stored_data_errors("converted")
def encode_frame(path: Source, frame_number: int, target_ts: str) -> bytes:
    """Return one frame in `target_ts` (PS3.18 8.7.3.5, frame retrieval with image media types).

    Parameters
    ----------
    path : Path or binary file
        A DICOM PS3.10 file, or a seekable file object over one (see :data:`Source`).
    frame_number : int
        1-based frame number.
    target_ts : str
        One of :data:`SUPPORTED_TARGETS`. For an uncompressed syntax the result is
        :func:`decode_frame`; for a codec it is one codestream (e.g. an RLE segment set or a
        JPEG 2000 ``j2k`` stream), not encapsulated. If `target_ts` is the stored syntax the
        stored codestream is returned without re-encoding.

    Returns
    -------
    bytes
        The frame in `target_ts`.

    Raises
    ------
    BadRequest
        If `frame_number` is out of range.
    NotAcceptable
        If the frame cannot be produced in `target_ts`.
    """
    header = read_header(path)
    index = frame_index(header, frame_number)
    source_ts = transfer_syntax_of(header)
    if not can_transcode(source_ts, target_ts):
        raise refusal(source_ts, target_ts)
    if target_ts in UNCOMPRESSED_SYNTAXES:
        return decode_frame(path, frame_number)
    if source_ts == target_ts:
        return _stored_codestream(path, header, index)
    arr = frame_array(path, header, index, raw=False)
    try:
        return _encode_array(arr, target_ts, _pixel_options(header, arr))
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise refusal(source_ts, target_ts, "pixel data not encodable") from exc


def _encode_array(arr: np.ndarray, target_ts: str, options: dict[str, Any]) -> bytes:
    """One frame's codestream in the lossless codec `target_ts`."""
    own = OWN_ENCODERS.get(target_ts)
    if own is not None:
        return own(arr)
    return bytes(get_encoder(target_ts).encode(arr, **options))


def _stored_codestream(path: Source, header: Dataset, index: int) -> bytes:
    ds = dcmread(rewound(path))
    if "PixelData" not in ds:
        raise NotAcceptable("instance has no pixel data")
    frames: Iterator[bytes] = generate_frames(
        ds.PixelData,
        number_of_frames=number_of_frames(header),
        extended_offsets=(
            (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
            if "ExtendedOffsetTable" in ds
            else None
        ),
    )
    for position, frame in enumerate(frames):
        if position == index:
            return frame
    raise NotAcceptable("encapsulated pixel data has fewer frames than Number of Frames")
