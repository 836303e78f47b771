"""Lossless re-encoding of a stored object, proved pixel-exact before it may replace it.

A store-time compression policy (a tier's ``tier_compression``, nubis.tiers.compression) hands
each object to :func:`compress_verified`. The new file is made by
:func:`nubis.dicom.transcode.transcode_file`, the conversion WADO-RS serves, with the permissive
encoders of :mod:`nubis.dicom.codecs`, and is returned only if these hold, checked on the files
themselves rather than trusted to the codec:

1. the source is stored losslessly, and when its pixel data is native, a sample's bits above
   Bits Stored hold nothing but the sign of a signed sample (no overlay or noise there, which
   no codec keeps: decoders give Bits Stored only). Then the samples compared below are every
   bit of the original;
2. decoded, every frame of the new file equals the source's, sample for sample: the same
   shape, data type and values (``raw`` frames, before any colour conversion);
3. where this installation writes the source's transfer syntax, the new file converted back
   into it, as a client asking for that syntax gets it (the same transcode_file), again gives
   every frame exactly;
4. the new file and the one converted back keep every other element of the data set: each
   equals the source's, but for Pixel Data, the elements of its encapsulation, and Planar
   Configuration, which a codec sets as it encodes (colour-by-pixel in a codestream, PS3.5
   8.2). Photometric Interpretation is kept too: the samples are coded as they are, with no
   colour transform, so that decoded they mean the same colours.

Anything else (a codec that refuses the data, values beyond Bits Stored an encoder would drop)
raises :class:`NotRecompressible` naming the reason, and the object stays as it is. Reasons
name attributes, never their values.
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
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from nubis.dicom.syntaxes import (
    LOSSLESS_SOURCES,
    SUPPORTED_TARGETS,
    UNCOMPRESSED_SYNTAXES,
    Source,
    read_source,
)
from nubis.dicom.transcode import transcode_file
from nubis.errors import NotAcceptable, NubisError

__all__ = ["LAYOUT_TAGS", "RECOMPRESSIBLE", "NotRecompressible", "compress_verified"]

log = logging.getLogger(__name__)

_PIXEL_DATA = 0x7FE00010
#: Planar Configuration: how a colour object's samples are laid out, which an encoder sets.
LAYOUT_TAGS = frozenset({0x00280006})
# Pixel Data and the elements of its encapsulation (PS3.3 C.7.6.3: extended offset table and
# its lengths, total length), which describe an encoding, not the image.
_NOT_COMPARED = LAYOUT_TAGS | {_PIXEL_DATA, 0x7FE00001, 0x7FE00002, 0x7FE00003}
# Sources whose Pixel Data is native, so that their stored words can be checked bit by bit.
_NATIVE = UNCOMPRESSED_SYNTAXES | {ExplicitVRBigEndian}

#: The transfer syntaxes a tier's policy re-encodes: uncompressed little endian pixel data,
#: which the archive also writes again, so that a client asking for the original syntax gets
#: it. (Explicit VR Big Endian is read, never written; deflate is a compression already.)
RECOMPRESSIBLE: frozenset[str] = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


class NotRecompressible(NotAcceptable):
    """The object cannot be re-encoded losslessly here; ``reason`` says why."""


def compress_verified(source: Source, target_ts: str) -> bytes:
    """The PS3.10 file `source` re-encoded in the lossless `target_ts`, proved pixel-exact.

    Parameters
    ----------
    source : Path or binary file
        A PS3.10 file with Pixel Data stored in a native or lossless transfer syntax.
    target_ts : str
        A lossless codec this installation encodes: a non-native member of
        :data:`nubis.dicom.syntaxes.SUPPORTED_TARGETS` (RLE, JPEG 2000, JPEG-LS or HTJ2K
        Lossless).

    Returns
    -------
    bytes
        The new file; see the module docstring for what was checked.

    Raises
    ------
    NotRecompressible
        When the file has no Pixel Data, the encoder refuses it, or a check fails.
    """
    original = read_source(source)
    ds = _parse(original, "the stored object")
    source_ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
    refused = f"cannot transcode from {source_ts or '(none)'} to {target_ts}"
    if target_ts not in SUPPORTED_TARGETS - UNCOMPRESSED_SYNTAXES:
        raise NotRecompressible(f"{refused}: not a lossless codec available here")
    if source_ts not in LOSSLESS_SOURCES:
        raise NotRecompressible(f"{refused}: the source is not stored losslessly")
    if "PixelData" not in ds or not ("Rows" in ds or "Columns" in ds):
        raise NotRecompressible(f"{refused}: instance has no pixel data")
    if source_ts in _NATIVE:
        _nothing_beyond_bits_stored(ds, big_endian=source_ts == ExplicitVRBigEndian)
    new = _convert(original, target_ts)
    compressed = _parse(new, "the compressed file")
    _same_elements(ds, compressed, "the compressed file")
    _same_frames(ds, compressed, "decoded")
    if source_ts in SUPPORTED_TARGETS:
        restored = _parse(_convert(new, source_ts), "the file converted back")
        _same_elements(ds, restored, "converting back")
        _same_frames(ds, restored, f"converted back to {source_ts}")
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


def _frames(ds: Dataset) -> Iterator[np.ndarray]:
    return iter_pixels(ds, raw=True)


def _same_frames(original: Dataset, other: Dataset, how: str) -> None:
    count = 0
    try:
        for count, (want, got) in enumerate(
            zip(_frames(original), _frames(other), strict=True), start=1
        ):
            # Kind and size: a big endian source decodes to big endian words of equal values.
            if want.dtype.str[1:] != got.dtype.str[1:] or want.shape != got.shape:
                raise NotRecompressible(
                    f"frame {count} {how} is {got.dtype} {got.shape}, not {want.dtype} {want.shape}"
                )
            if not np.array_equal(want, got):
                raise NotRecompressible(f"frame {count} would not be pixel-exact ({how})")
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


def _nothing_beyond_bits_stored(ds: Dataset, *, big_endian: bool) -> None:
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
    order = ">" if big_endian else "<"
    dtype = np.dtype(f"{order}{'i' if signed else 'u'}{allocated // 8}")
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
    """Every element but the pixels, their encapsulation and planar layout equal in both,
    nested ones included. Group lengths (gggg,0000) are not compared: they describe an
    encoding, which pydicom writes without them (they are retired, PS3.5 7.2)."""
    tags = (set(original.keys()) | set(other.keys())) - _NOT_COMPARED
    for tag in sorted(t for t in tags if t & 0xFFFF):
        want = original.get(tag)
        got = other.get(tag)
        if want != got:
            name = keyword_for_tag(tag) or "private"
            raise NotRecompressible(f"{what} changes {Tag(tag)} {name}")
