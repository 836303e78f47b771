"""Transfer syntax conversion for WADO-RS retrieval (PS3.18 8.7.3.5).

A stored instance is kept in the transfer syntax it arrived in; when a client asks for another
one (``transfer-syntax`` media type parameter, PS3.18 8.7.3.5.2) it is converted here. Every
conversion is lossless with respect to the stored pixel values: lossy sources may be decoded into
lossless or uncompressed syntaxes, but nothing is ever encoded with a lossy codec, so no new SOP
Instance UID is needed (PS3.4 C.4.3.1.2 would require one for new lossy data). A lossless
source keeps its Photometric Interpretation; a lossy one is converted to RGB. Single frames are
:mod:`nubis.dicom.frame_codec`'s.
"""

from __future__ import annotations

import io
import struct
from copy import copy

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset, validate_file_meta
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_file_meta_info
from pydicom.pixels import get_decoder, pack_bits, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from nubis.dicom.frame_codec import native_frame_bytes, number_of_frames
from nubis.dicom.pixel_checks import check_pixel_module, named_attribute, stored_data_errors
from nubis.dicom.syntaxes import (
    LOSSLESS_SOURCES,
    LOSSY_METHODS,
    NATIVE_SOURCES,
    OWN_ENCODERS,
    SUPPORTED_TARGETS,
    UNCOMPRESSED_SYNTAXES,
    Source,
    decodable,
    read_source,
    refusal,
    transfer_syntax_of,
)
from nubis.errors import NotAcceptable

__all__ = ["transcode_file"]

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Binary VRs whose value pydicom keeps as raw bytes; on a big endian source each word has to be
# swapped by hand before the dataset is written little endian.
_WORD_SIZES: dict[str, int] = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


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
            data = b"".join(native_frame_bytes(frame, ds) for frame in frames)
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
    method = LOSSY_METHODS.get(source_ts)
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
    source_ts = transfer_syntax_of(ds)
    if source_ts == target_ts:
        return data
    if target_ts not in SUPPORTED_TARGETS:
        raise refusal(source_ts, target_ts, "target transfer syntax not supported")

    pixel_keyword = next((kw for kw in _PIXEL_KEYWORDS if kw in ds), None)
    if pixel_keyword is None:
        # Without pixel data the "compressed" syntaxes are just explicit VR little endian.
        if target_ts not in UNCOMPRESSED_SYNTAXES:
            raise refusal(source_ts, target_ts, "instance has no pixel data")
    elif not decodable(source_ts):
        raise refusal(source_ts, target_ts, "source transfer syntax cannot be decoded")
    elif target_ts not in UNCOMPRESSED_SYNTAXES and pixel_keyword != "PixelData":
        raise refusal(source_ts, target_ts, "float pixel data cannot be compressed")

    if pixel_keyword == "PixelData" and (
        source_ts not in UNCOMPRESSED_SYNTAXES or target_ts not in UNCOMPRESSED_SYNTAXES
    ):
        check_pixel_module(ds)  # its pixels are decoded, or encoded
    try:
        if (
            pixel_keyword == "PixelData"
            and target_ts == ExplicitVRLittleEndian
            and source_ts not in NATIVE_SOURCES
        ):
            spliced = _spliced_native(data, ds, source_ts)
            if spliced is not None:
                return spliced
        if pixel_keyword is not None:
            if source_ts == ExplicitVRBigEndian:
                _big_endian_to_little(ds)
            elif source_ts not in NATIVE_SOURCES:
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
        raise refusal(source_ts, target_ts, why) from exc
    except AttributeError as exc:
        raise refusal(source_ts, target_ts, "file meta information incomplete") from exc
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
    own = OWN_ENCODERS.get(target_ts)
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
        or (source_ts in LOSSY_METHODS and "LossyImageCompression" not in ds)
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
