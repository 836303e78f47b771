"""Transfer syntax conversion for WADO-RS retrieval (PS3.18 8.7.3.5).

A stored instance is kept in the transfer syntax it arrived in; when a client asks for another
one (``transfer-syntax`` media type parameter, PS3.18 8.7.3.5.2) it is converted here. Every
conversion is lossless with respect to the stored pixel values: lossy sources may be decoded into
lossless or uncompressed syntaxes, but nothing is ever encoded with a lossy codec, so no new SOP
Instance UID is needed (PS3.4 C.4.3.1.2 would require one for new lossy data).

Frames are decoded one at a time through :func:`pydicom.pixels.pixel_array` with ``index`` so that
serving frame 1,000 of a 2,000-frame object never decodes the other 1,999. The codecs are the
permissively licensed ones of :mod:`nubis.dicom.codecs`.

Decoding a lossless source keeps its Photometric Interpretation (YBR_FULL stays YBR_FULL: the
conversion to RGB is not reversible); a lossy source is converted to RGB as viewers expect.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Iterator
from copy import copy
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset, validate_file_meta
from pydicom.encaps import encapsulate, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.pixels import get_decoder, get_encoder, pack_bits, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from nubis.dicom import codecs
from nubis.dicom.pixel_checks import check_pixel_module, named_attribute, stored_data_errors
from nubis.errors import BadRequest, NotAcceptable

codecs.register()

__all__ = [
    "LOSSLESS_SOURCES",
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
    "read_source",
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


def read_source(source: Source) -> bytes:
    """The whole PS3.10 file `source` (a file object is read from its start)."""
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
_LOSSLESS_CODECS: tuple[str, ...] = (RLELossless, JPEG2000Lossless, JPEGLSLossless, HTJ2KLossless)

#: Syntaxes whose pixel data is lossless by definition: what a store-time compression
#: (nubis.dicom.recompress) accepts as a source (a lossy one decodes to whatever the installed
#: decoder makes of it).
LOSSLESS_SOURCES: frozenset[str] = _NATIVE_SOURCES | {
    RLELossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
}

# Encoders nubis has itself (:mod:`nubis.dicom.codecs`): pydicom 3 has none for HTJ2K.
_OWN_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    HTJ2KLossless: codecs.encode_htj2k_lossless
}

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
    if uid in _OWN_ENCODERS:
        return True
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
        return _encode_array(arr, target_ts, _pixel_options(header, arr))
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise _refusal(source_ts, target_ts, "pixel data not encodable") from exc


def _encode_array(arr: np.ndarray, target_ts: str, options: dict[str, Any]) -> bytes:
    """One frame's codestream in the lossless codec `target_ts`."""
    own = _OWN_ENCODERS.get(target_ts)
    if own is not None:
        return own(arr)
    return bytes(get_encoder(target_ts).encode(arr, **options))


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
    data = read_source(path)
    try:
        ds = dcmread(io.BytesIO(data))  # parsed once: element values are decoded on demand
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise NotAcceptable("stored instance is not a readable DICOM file") from exc
    source_ts = _transfer_syntax(ds)
    if source_ts == target_ts:
        return data
    if target_ts not in SUPPORTED_TARGETS:
        raise _refusal(source_ts, target_ts, "target transfer syntax not supported")

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
        if (
            pixel_keyword == "PixelData"
            and target_ts == ExplicitVRLittleEndian
            and source_ts not in _NATIVE_SOURCES
        ):
            spliced = _spliced_native(data, ds, source_ts)
            if spliced is not None:
                return spliced
        if pixel_keyword is not None:
            if source_ts == ExplicitVRBigEndian:
                _big_endian_to_little(ds)
            elif source_ts not in _NATIVE_SOURCES:
                compressed_length = len(ds.PixelData)
                as_rgb = source_ts not in LOSSLESS_SOURCES
                ds.decompress(as_rgb=as_rgb, generate_instance_uid=False)
                _pack_one_bit_samples(ds)
                _drop_encapsulation_elements(ds)
                _record_lossy_source(ds, source_ts, compressed_length)
            if target_ts not in UNCOMPRESSED_SYNTAXES:
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                _compress(ds, target_ts)
        ds.file_meta.TransferSyntaxUID = UID(target_ts)
        buffer = io.BytesIO()
        dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        why = f"the data set cannot be converted{named_attribute(exc)}"
        raise _refusal(source_ts, target_ts, why) from exc
    except AttributeError as exc:
        raise _refusal(source_ts, target_ts, "file meta information incomplete") from exc
    return buffer.getvalue()


# Elements of the Encapsulated Pixel Data (PS3.3 C.7.6.3): meaningless, and not allowed, once
# the pixel data is native.
_ENCAPSULATION_KEYWORDS = (
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "EncapsulatedPixelDataValueTotalLength",
)


def _pack_one_bit_samples(ds: Dataset) -> None:
    """Pack decoded 1-bit samples, which pydicom leaves one per byte (PS3.5 8.1.1)."""
    if ds.get("BitsAllocated") != 1:
        return
    samples = number_of_frames(ds) * int(ds.Rows) * int(ds.Columns)
    ds.PixelData = pack_bits(np.frombuffer(ds.PixelData, dtype=np.uint8)[:samples])


def _drop_encapsulation_elements(ds: Dataset) -> None:
    for keyword in _ENCAPSULATION_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)


def _compress(ds: Dataset, target_ts: str) -> None:
    """Encode the native pixel data of `ds` into the lossless codec `target_ts`, in place."""
    own = _OWN_ENCODERS.get(target_ts)
    if own is None:
        ds.compress(target_ts, generate_instance_uid=False)
        return
    if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        # pydicom returns 4:2:2 pixels upsampled: the codestream would not be what it says.
        raise ValueError("(0028,0004) Photometric Interpretation YBR_FULL_422 is not encodable")
    # Samples as stored (raw), so the Photometric Interpretation holds for the codestream.
    frames = [own(pixel_array(ds, index=index, raw=True)) for index in range(number_of_frames(ds))]
    ds.PixelData = encapsulate(frames, has_bot=len(frames) > 1)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if ds.get("SamplesPerPixel", 1) > 1:
        ds.PlanarConfiguration = 0  # PS3.5 8.2.4: colour-by-pixel in the codestream
    ds.file_meta.TransferSyntaxUID = UID(target_ts)


# The sequence delimitation item closing encapsulated pixel data (PS3.5 A.4).
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _spliced_native(data: bytes, ds: FileDataset, source_ts: str) -> bytes | None:
    """Decode an encapsulated instance to Explicit VR Little Endian by splicing bytes.

    The stored data set is already explicit VR little endian (PS3.5 A.4), so when decoding
    changes no element before the pixel data, the stored bytes around it are kept as they are
    and only the file meta information and the pixel data are written: the same bytes as the
    pydicom round trip (:func:`transcode_file`'s general path) at a fraction of its time.
    Returns ``None`` when an element would change (colour, a missing lossy flag, encapsulation
    elements, an unexpected layout); the general path then does the conversion.
    """
    tags = list(ds.keys())  # the raw elements, none decoded yet: their file positions hold
    if not tags or any(
        tag >> 16 == 0x7FE0 and tag != 0x7FE00010 for tag in tags
    ):  # extended offset table, total length
        return None
    first = ds.get_item(tags[0])
    pixel = ds.get_item(0x7FE00010)
    # Where each value starts in the file: raw elements keep it as value_tell, elements pydicom
    # already decoded while reading (Specific Character Set) as file_tell.
    first_value_at = getattr(first, "value_tell", getattr(first, "file_tell", None))
    if first_value_at is None or not hasattr(pixel, "value_tell"):
        return None
    first_at = first_value_at - (12 if first.VR in EXPLICIT_VR_LENGTH_32 else 8)
    pixel_at = pixel.value_tell - 12
    pixel_end = pixel.value_tell + len(pixel.value) + len(_SEQUENCE_DELIMITER)
    if (
        getattr(pixel, "length", None) != 0xFFFFFFFF  # raw: not decoded yet
        or data[pixel_at : pixel_at + 4] != b"\xe0\x7f\x10\x00"
        or data[pixel_end - len(_SEQUENCE_DELIMITER) : pixel_end] != _SEQUENCE_DELIMITER
        or ds.get("SamplesPerPixel", 1) != 1
        or (source_ts in _LOSSY_METHODS and "LossyImageCompression" not in ds)
    ):
        return None

    frames = []
    expected = number_of_frames(ds)
    photometric = ds.get("PhotometricInterpretation")
    for arr, image_pixel in get_decoder(source_ts).iter_array(ds, as_rgb=False):
        if image_pixel.get("photometric_interpretation") != photometric:
            return None
        frames.append(arr.tobytes())
    if len(frames) != expected:
        return None
    if int(ds.BitsAllocated) == 1:
        # Frames of 1-bit samples are packed end to end, not each from a byte boundary.
        samples = np.frombuffer(b"".join(frames), dtype=np.uint8)
        frames = [pack_bits(samples, pad=False)]
    length = sum(len(frame) for frame in frames)
    if length >= 0xFFFFFFFE:
        raise ValueError("the native pixel data would exceed the 32-bit value length")
    if length % 2:
        frames.append(b"\x00")
        length += 1
    vr = b"OB" if int(ds.BitsAllocated) <= 8 else b"OW"
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, vr, 0, length)
    return b"".join(
        (
            _file_meta_bytes(ds, ExplicitVRLittleEndian),
            data[first_at:pixel_at],
            pixel_header,
            *frames,
            data[pixel_end:],
        )
    )


def _file_meta_bytes(ds: FileDataset, target_ts: str) -> bytes:
    """Preamble, prefix and file meta group as ``dcmwrite(enforce_file_format=True)`` writes
    them for `ds` in `target_ts`."""
    # Element copies (not deepcopy: ten times slower), so the source's meta stays untouched.
    meta = FileMetaDataset({tag: copy(ds.file_meta[tag]) for tag in ds.file_meta.keys()})  # noqa: SIM118
    meta.TransferSyntaxUID = UID(target_ts)
    for meta_keyword, keyword in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        value = ds.get(keyword)
        if meta.get(meta_keyword) is None or (value and value != meta.get(meta_keyword)):
            setattr(meta, meta_keyword, value)
    validate_file_meta(meta, enforce_standard=True)
    buffer = DicomBytesIO()
    buffer.write(ds.preamble or b"\x00" * 128)
    buffer.write(b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()
