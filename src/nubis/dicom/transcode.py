"""Transfer syntax conversion for WADO-RS retrieval (PS3.18 8.7.3.5).

A stored instance is kept in the transfer syntax it arrived in; when a client asks for another
one (``transfer-syntax`` media type parameter, PS3.18 8.7.3.5.2) it is converted here. Every
conversion is lossless with respect to the stored pixel values: lossy sources may be decoded into
lossless or uncompressed syntaxes, but nothing is ever encoded with a lossy codec, so no new SOP
Instance UID is needed (PS3.4 C.4.3.1.2 would require one for new lossy data).

Frames are decoded one at a time through :func:`pydicom.pixels.pixel_array` with ``index`` so that
serving frame 1,000 of a 2,000-frame object never decodes the other 1,999.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder, get_encoder, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from nubis.dicom.pixel_checks import check_pixel_module, named_attribute, stored_data_errors
from nubis.errors import BadRequest, NotAcceptable

__all__ = [
    "SUPPORTED_TARGETS",
    "UNCOMPRESSED_SYNTAXES",
    "Source",
    "can_transcode",
    "decode_frame",
    "encode_frame",
    "frame_array",
    "frame_index",
    "number_of_frames",
    "read_header",
    "transcode_file",
]

Source = Path | BinaryIO
"""A stored instance: a local file, or a seekable binary file object over one (the blob
store's :meth:`~nubis.ports.blobs.BlobStore.open`, which decrypts encrypted blobs on the fly);
file objects are rewound before each parse and left open for the caller to close."""


def _rewound(source: Source) -> Source:
    if not isinstance(source, Path):
        source.seek(0)
    return source


def _read_all(source: Source) -> bytes:
    if isinstance(source, Path):
        return source.read_bytes()
    source.seek(0)
    return source.read()


#: Transfer syntaxes whose Pixel Data is native (not encapsulated) and which we can write.
UNCOMPRESSED_SYNTAXES: frozenset[str] = frozenset(
    {ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)

# Explicit VR Big Endian was retired in 2004 but archives still receive it; it is readable and
# convertible to little endian, never produced.
_NATIVE_SOURCES: frozenset[str] = UNCOMPRESSED_SYNTAXES | {ExplicitVRBigEndian}

# Only lossless codecs are candidates: encoding a lossless source lossily would silently
# degrade it and would require a new SOP Instance UID.
_LOSSLESS_CODECS: tuple[str, ...] = (RLELossless, JPEG2000Lossless, JPEGLSLossless)

# Sources that are lossy by construction, so the decoded result must keep saying so
# (PS3.3 C.7.6.1.1.5). JPEG 2000 and HTJ2K "lossy" syntaxes may still carry reversible data,
# so they are not listed.
_LOSSY_METHODS: dict[str, str] = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
}

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Binary VRs whose value pydicom keeps as raw bytes; on a big endian source each word has to be
# swapped by hand before the dataset is written little endian.
_WORD_SIZES: dict[str, int] = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _encoder_available(uid: str) -> bool:
    try:
        return bool(get_encoder(uid).is_available)
    except NotImplementedError:
        return False


#: Transfer syntaxes :func:`transcode_file` can produce in this installation.
SUPPORTED_TARGETS: frozenset[str] = UNCOMPRESSED_SYNTAXES | frozenset(
    uid for uid in _LOSSLESS_CODECS if _encoder_available(uid)
)


def _uid_text(uid: str) -> str:
    return str(uid) if uid else "(none)"


def _decodable(source_ts: str) -> bool:
    if source_ts in _NATIVE_SOURCES:
        return True
    try:
        return bool(get_decoder(source_ts).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """Tell whether an image in `source_ts` can be served in `target_ts`.

    Parameters
    ----------
    source_ts : str
        Transfer Syntax UID the instance is stored in.
    target_ts : str
        Transfer Syntax UID the client asked for (PS3.18 8.7.3.5.2).

    Returns
    -------
    bool
        ``True`` when the two are equal, or when the source can be decoded with the installed
        pydicom plug-ins and `target_ts` is in :data:`SUPPORTED_TARGETS`. Instances without
        pixel data are further limited to the uncompressed syntaxes by :func:`transcode_file`.
    """
    if source_ts == target_ts:
        return True
    return target_ts in SUPPORTED_TARGETS and _decodable(source_ts)


def read_header(path: Source) -> FileDataset:
    """Read every element before the pixel data of the PS3.10 file at `path`.

    Parameters
    ----------
    path : Path or binary file
        A DICOM PS3.10 file, or a seekable file object over one (see :data:`Source`).

    Returns
    -------
    pydicom.dataset.FileDataset
        The data set without its (7FE0,00xx) pixel data element; the file meta information is
        available as ``file_meta``.

    Raises
    ------
    NotAcceptable
        If the file is not a readable DICOM file.
    """
    try:
        return dcmread(_rewound(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise NotAcceptable("stored instance is not a readable DICOM file") from exc


def _transfer_syntax(ds: Dataset) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    uid = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not uid:
        # pydicom inferred the encoding of a file without meta information; only the native
        # encodings can be inferred, so map them back to their UIDs.
        implicit, little = ds.original_encoding
        if little is False:
            return ExplicitVRBigEndian
        return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return UID(uid)


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
    source_ts = _transfer_syntax(header)
    try:
        if source_ts == DeflatedExplicitVRLittleEndian:
            # Deflate has no random access: the whole data set is inflated anyway.
            return pixel_array(dcmread(_rewound(path)), index=index, raw=raw)
        return pixel_array(_rewound(path), index=index, raw=raw)
    except AttributeError as exc:
        raise NotAcceptable("instance has no pixel data") from exc
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        raise NotAcceptable(
            f"pixel data in transfer syntax {_uid_text(source_ts)} cannot be decoded"
        ) from exc


def _little_endian_bytes(arr: np.ndarray) -> bytes:
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _native_frame_bytes(arr: np.ndarray, header: Dataset) -> bytes:
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
    if _transfer_syntax(header) in _NATIVE_SOURCES:
        return _native_frame_bytes(frame_array(path, header, index, raw=True), header)
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
    source_ts = _transfer_syntax(header)
    if not can_transcode(source_ts, target_ts):
        raise _refusal(source_ts, target_ts)
    if target_ts in UNCOMPRESSED_SYNTAXES:
        return decode_frame(path, frame_number)
    if source_ts == target_ts:
        return _stored_codestream(path, header, index)
    arr = frame_array(path, header, index, raw=False)
    try:
        return get_encoder(target_ts).encode(arr, **_pixel_options(header, arr))
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise _refusal(source_ts, target_ts, "pixel data not encodable") from exc


def _stored_codestream(path: Source, header: Dataset, index: int) -> bytes:
    ds = dcmread(_rewound(path))
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


def _refusal(source_ts: str, target_ts: str, why: str = "") -> NotAcceptable:
    reason = f"cannot transcode from {_uid_text(source_ts)} to {_uid_text(target_ts)}"
    return NotAcceptable(f"{reason}: {why}" if why else reason)


def _swap_binary_words(ds: Dataset) -> None:
    """Byte-swap raw multi-byte binary values of a big endian data set, recursively."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _swap_binary_words(item)
        elif elem.VR in _WORD_SIZES and elem.value and elem.keyword not in _PIXEL_KEYWORDS:
            size = _WORD_SIZES[elem.VR]
            words = np.frombuffer(elem.value, dtype=f">u{size}")
            elem.value = words.astype(f"<u{size}").tobytes()


def _big_endian_to_little(ds: FileDataset) -> None:
    pixel_keyword = next((kw for kw in _PIXEL_KEYWORDS if kw in ds), None)
    if pixel_keyword is not None:
        if pixel_keyword == "PixelData":
            # pydicom knows how each Bits Allocated is laid out in big endian OW.
            frames = pixel_array(ds, raw=True)
            if number_of_frames(ds) == 1:
                frames = frames[np.newaxis]
            data = b"".join(_native_frame_bytes(frame, ds) for frame in frames)
        else:
            width = 4 if pixel_keyword == "FloatPixelData" else 8
            data = (
                np.frombuffer(ds[pixel_keyword].value, dtype=f">f{width}")
                .astype(f"<f{width}")
                .tobytes()
            )
        ds[pixel_keyword].value = data + b"\x00" * (len(data) % 2)
    _swap_binary_words(ds)


def _record_lossy_source(ds: Dataset, source_ts: str, compressed_length: int) -> None:
    """Keep the decoded image marked as lossy (PS3.3 C.7.6.1.1.5) when the source is lossy."""
    method = _LOSSY_METHODS.get(source_ts)
    if method is None or "LossyImageCompression" in ds:
        return
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = method
    if compressed_length:
        ratio = len(ds.PixelData) / compressed_length
        ds.LossyImageCompressionRatio = f"{ratio:.4g}"[:16]


@stored_data_errors("converted")
def transcode_file(path: Source, target_ts: str) -> bytes:
    """Return the instance at `path` as a PS3.10 file in `target_ts` (PS3.18 8.7.3.5).

    Parameters
    ----------
    path : Path or binary file
        A DICOM PS3.10 file, or a seekable file object over one (see :data:`Source`).
    target_ts : str
        Transfer Syntax UID to produce, one of :data:`SUPPORTED_TARGETS`.

    Returns
    -------
    bytes
        Preamble, file meta information with (0002,0010) set to `target_ts`, and the data set.
        Every element other than the pixel data and the Image Pixel attributes describing it
        (Photometric Interpretation, Planar Configuration) keeps its value, including private
        elements and the SOP Instance UID. Decoding a lossy JPEG source adds Lossy Image
        Compression attributes if they were missing. If `target_ts` is the stored transfer
        syntax the stored bytes are returned unchanged.

    Raises
    ------
    NotAcceptable
        If the conversion is not possible: undecodable source, unsupported target, a codec
        target for an instance without pixel data, or pixel data the target codec cannot
        represent. The reason names both UIDs.
    """
    header = read_header(path)
    source_ts = _transfer_syntax(header)
    if source_ts == target_ts:
        return _read_all(path)
    if target_ts not in SUPPORTED_TARGETS:
        raise _refusal(source_ts, target_ts, "target transfer syntax not supported")

    try:
        ds = dcmread(_rewound(path))
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise NotAcceptable("stored instance is not a readable DICOM file") from exc

    pixel_keyword = next((kw for kw in _PIXEL_KEYWORDS if kw in ds), None)
    if pixel_keyword is None:
        # Without pixel data the "compressed" syntaxes are just explicit VR little endian.
        if target_ts not in UNCOMPRESSED_SYNTAXES:
            raise _refusal(source_ts, target_ts, "instance has no pixel data")
    elif not _decodable(source_ts):
        raise _refusal(source_ts, target_ts, "source transfer syntax cannot be decoded")
    elif target_ts not in UNCOMPRESSED_SYNTAXES and pixel_keyword != "PixelData":
        raise _refusal(source_ts, target_ts, "float pixel data cannot be compressed")

    if pixel_keyword == "PixelData" and (
        source_ts not in UNCOMPRESSED_SYNTAXES or target_ts not in UNCOMPRESSED_SYNTAXES
    ):
        check_pixel_module(ds)  # its pixels are decoded, or encoded
    try:
        if pixel_keyword is not None:
            if source_ts == ExplicitVRBigEndian:
                _big_endian_to_little(ds)
            elif source_ts not in _NATIVE_SOURCES:
                compressed_length = len(ds.PixelData)
                ds.decompress(as_rgb=True, generate_instance_uid=False)
                _record_lossy_source(ds, source_ts, compressed_length)
            if target_ts not in UNCOMPRESSED_SYNTAXES:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.compress(target_ts, generate_instance_uid=False)
        ds.file_meta.TransferSyntaxUID = UID(target_ts)
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        why = f"the data set cannot be converted{named_attribute(exc)}"
        raise _refusal(source_ts, target_ts, why) from exc
    except AttributeError as exc:
        raise _refusal(source_ts, target_ts, "file meta information incomplete") from exc
    return buffer.getvalue()
