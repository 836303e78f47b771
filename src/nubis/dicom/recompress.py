"""Lossless re-encoding of a stored object, proved pixel-exact before it may replace it.

A tier that keeps its objects compressed (nubis.tiers.compression) hands each object with
uncompressed pixel data to :func:`recompress`. The new file is made by
:func:`nubis.dicom.transcode.transcode_file`, the conversion WADO-RS serves, and is accepted only
if these hold, checked on the files themselves rather than trusted to the codec:

1. decoded, every frame of the new file equals the original's, sample for sample: the same
   shape, data type and values (``raw`` frames, before any colour conversion). Decoders keep
   a sample's Bits Stored only, so the original's bits above them must hold nothing but the
   sign of a signed sample (no overlay or noise there, which no codec would keep): then the
   samples compared are every bit of the original;
2. converted back into the original's transfer syntax, as a client asking for that syntax gets
   it (the same transcode_file), every frame again equals the original's;
3. the new file and the one converted back keep every other element of the data set: each
   equals the original's, but for Pixel Data and the two attributes that describe its layout
   (Photometric Interpretation, Planar Configuration), which a codec sets as it encodes (JPEG
   2000's reversible colour transform is YBR_RCT; decoding gives RGB again, interleaved).

Anything else (a codec that refuses the data, values beyond Bits Stored an encoder would drop,
YCbCr that decodes to RGB) raises :class:`NotRecompressible` naming the reason, and the object
stays as it is. Reasons name attributes, never their values.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import numpy as np
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from nubis.dicom.transcode import transcode_file
from nubis.errors import NubisError

__all__ = ["LAYOUT_TAGS", "RECOMPRESSIBLE", "NotRecompressible", "recompress"]

log = logging.getLogger(__name__)

_PIXEL_DATA = 0x7FE00010
# Photometric Interpretation, Planar Configuration: how the pixels are laid out, which an
# encoder chooses (PS3.5 8.2.4: YBR_RCT for JPEG 2000's reversible colour transform).
LAYOUT_TAGS = frozenset({0x00280004, 0x00280006})
_NOT_COMPARED = LAYOUT_TAGS | {_PIXEL_DATA}

#: The transfer syntaxes of objects that may be re-encoded: uncompressed pixel data that the
#: archive can also write again, so that a client asking for the original syntax gets it.
#: (Explicit VR Big Endian is read, never written; deflate is a compression already.)
RECOMPRESSIBLE: frozenset[str] = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


class NotRecompressible(Exception):
    """The object cannot be re-encoded losslessly here; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def recompress(original: bytes, target_ts: str) -> bytes:
    """The PS3.10 file ``original`` re-encoded in ``target_ts``, proved pixel-exact.

    Parameters
    ----------
    original : bytes
        A stored PS3.10 file with Pixel Data.
    target_ts : str
        A lossless transfer syntax this installation encodes
        (nubis.dicom.transcode.SUPPORTED_TARGETS).

    Returns
    -------
    bytes
        The new file; see the module docstring for what was checked.

    Raises
    ------
    NotRecompressible
        When the file has no Pixel Data, the encoder refuses it, or a check fails.
    """
    source = _parse(original, "the stored object")
    source_ts = str(source.file_meta.get("TransferSyntaxUID", ""))
    if source_ts not in RECOMPRESSIBLE:
        raise NotRecompressible(
            f"stored in {source_ts or 'no transfer syntax'}: only uncompressed little endian "
            "pixel data is re-encoded"
        )
    if "PixelData" not in source:
        raise NotRecompressible("no Pixel Data")
    _nothing_beyond_bits_stored(source)
    new = _convert(original, target_ts)
    _same_elements(source, _parse(new, "the compressed file"), "the compressed file")
    _same_frames(original, new, "decoded")
    restored = _convert(new, source_ts)
    _same_elements(source, _parse(restored, "the file converted back"), "converting back")
    _same_frames(original, restored, f"converted back to {source_ts}")
    return new


def _parse(data: bytes, what: str) -> Dataset:
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:
        raise NotRecompressible(f"{what} cannot be read ({type(exc).__name__})") from exc


def _convert(data: bytes, target_ts: str) -> bytes:
    try:
        return transcode_file(io.BytesIO(data), target_ts)
    except NubisError as exc:
        raise NotRecompressible(exc.reason) from exc
    except Exception as exc:
        # A codec failing in a way of its own must not stop the job: the object is kept.
        log.warning("re-encoding to %s failed: %s", target_ts, type(exc).__name__)
        raise NotRecompressible(f"the codec failed ({type(exc).__name__})") from exc


def _frames(data: bytes) -> Iterator[np.ndarray]:
    return iter_pixels(io.BytesIO(data), raw=True)


def _same_frames(original: bytes, other: bytes, how: str) -> None:
    count = 0
    try:
        for count, (want, got) in enumerate(
            zip(_frames(original), _frames(other), strict=True), start=1
        ):
            if want.dtype != got.dtype or want.shape != got.shape:
                raise NotRecompressible(
                    f"frame {count} {how} is {got.dtype} {got.shape}, not {want.dtype} {want.shape}"
                )
            if not np.array_equal(want, got):
                raise NotRecompressible(f"frame {count} {how} differs from the original's pixels")
    except NotRecompressible:
        raise
    except ValueError as exc:
        if "zip()" in str(exc):
            raise NotRecompressible(f"{how}, the number of frames differs") from exc
        raise NotRecompressible(f"frame {count + 1} cannot be decoded ({how})") from exc
    except Exception as exc:
        raise NotRecompressible(
            f"frame {count + 1} cannot be decoded ({how}: {type(exc).__name__})"
        ) from exc


def _nothing_beyond_bits_stored(ds: Dataset) -> None:
    """NotRecompressible when a sample's bits above Bits Stored hold more than its sign."""
    try:
        allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        count = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
        count *= int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise NotRecompressible("the pixel module is incomplete") from exc
    if allocated not in (8, 16, 32) or not 0 < stored < allocated:
        return  # every bit allocated is stored (or the codec refuses the layout anyway)
    dtype = np.dtype(f"<{'i' if signed else 'u'}{allocated // 8}")
    try:
        words = np.frombuffer(ds.PixelData, dtype=dtype, count=count)
    except ValueError as exc:
        raise NotRecompressible("Pixel Data is shorter than its attributes say") from exc
    shift = allocated - stored
    # Arithmetic shifts for signed samples: what is kept is the sample sign-extended.
    if not np.array_equal(words, (words << shift) >> shift):
        raise NotRecompressible(
            "bits above Bits Stored hold data (an overlay, or noise) that no codec keeps"
        )


def _same_elements(original: Dataset, other: Dataset, what: str) -> None:
    """Every element but the pixels and their layout equal in both, nested ones included.
    Group lengths (gggg,0000) are not compared: they describe an encoding, which pydicom
    writes without them (they are retired, PS3.5 7.2)."""
    tags = (set(original.keys()) | set(other.keys())) - _NOT_COMPARED
    for tag in sorted(t for t in tags if t & 0xFFFF):
        want = original.get(tag)
        got = other.get(tag)
        if want != got:
            name = keyword_for_tag(tag) or "private"
            raise NotRecompressible(f"{what} changes {Tag(tag)} {name}")
