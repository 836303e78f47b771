"""What this installation can decode and encode, and reading a stored instance's header.

The transfer syntaxes WADO-RS may convert between (PS3.18 8.7.3.5) and the checks every
conversion starts with, shared by the whole-file conversion (:mod:`nubis.dicom.transcode`) and
the frame-level one (:mod:`nubis.dicom.frame_codec`). Only lossless codecs are ever encoding
targets; the codecs are the permissively licensed ones of :mod:`nubis.dicom.codecs`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, get_encoder
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

from nubis.dicom import codecs
from nubis.errors import NotAcceptable

codecs.register()

__all__ = [
    "LOSSLESS_SOURCES",
    "LOSSY_METHODS",
    "NATIVE_SOURCES",
    "OWN_ENCODERS",
    "SUPPORTED_TARGETS",
    "UNCOMPRESSED_SYNTAXES",
    "Source",
    "can_transcode",
    "decodable",
    "read_header",
    "read_source",
    "refusal",
    "rewound",
    "transfer_syntax_of",
    "uid_text",
]

Source = Path | BinaryIO
"""A stored instance: a local file, or a seekable binary file object over one (the blob
store's :meth:`~nubis.ports.blobs.BlobStore.open`, which decrypts encrypted blobs on the fly);
file objects are rewound before each parse and left open for the caller to close."""


def rewound(source: Source) -> Source:
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
NATIVE_SOURCES: frozenset[str] = UNCOMPRESSED_SYNTAXES | {ExplicitVRBigEndian}

# Only lossless codecs are candidates: encoding a lossless source lossily would silently
# degrade it and would require a new SOP Instance UID.
_LOSSLESS_CODECS: tuple[str, ...] = (RLELossless, JPEG2000Lossless, JPEGLSLossless, HTJ2KLossless)

#: Syntaxes whose pixel data is lossless by definition: what a store-time compression
#: (nubis.dicom.recompress) accepts as a source (a lossy one decodes to whatever the installed
#: decoder makes of it).
LOSSLESS_SOURCES: frozenset[str] = NATIVE_SOURCES | {
    RLELossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
}

# Encoders nubis has itself (:mod:`nubis.dicom.codecs`): pydicom 3 has none for HTJ2K.
OWN_ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    HTJ2KLossless: codecs.encode_htj2k_lossless
}

# Sources that are lossy by construction, so the decoded result must keep saying so
# (PS3.3 C.7.6.1.1.5). JPEG 2000 and HTJ2K "lossy" syntaxes may still carry reversible data,
# so they are not listed.
LOSSY_METHODS: dict[str, str] = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
}


def _encoder_available(uid: str) -> bool:
    if uid in OWN_ENCODERS:
        return True
    try:
        return bool(get_encoder(uid).is_available)
    except NotImplementedError:
        return False


#: Transfer syntaxes :func:`transcode_file` can produce in this installation.
SUPPORTED_TARGETS: frozenset[str] = UNCOMPRESSED_SYNTAXES | frozenset(
    uid for uid in _LOSSLESS_CODECS if _encoder_available(uid)
)


def uid_text(uid: str) -> str:
    return str(uid) if uid else "(none)"


def decodable(source_ts: str) -> bool:
    if source_ts in NATIVE_SOURCES:
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
    return target_ts in SUPPORTED_TARGETS and decodable(source_ts)


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
        return dcmread(rewound(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, OSError) as exc:
        raise NotAcceptable("stored instance is not a readable DICOM file") from exc


def transfer_syntax_of(ds: Dataset) -> UID:
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


def refusal(source_ts: str, target_ts: str, why: str = "") -> NotAcceptable:
    reason = f"cannot transcode from {uid_text(source_ts)} to {uid_text(target_ts)}"
    return NotAcceptable(f"{reason}: {why}" if why else reason)
