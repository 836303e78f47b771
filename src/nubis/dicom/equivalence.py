"""Whether two PS3.10 files hold the same SOP instance in different encodings.

Routers and modalities re-send an instance they sent before, often compressed or re-wrapped
(another transfer syntax, another file meta, group lengths added or dropped). Such a copy is
the same instance; a copy whose values differ is another object under the same UID. The data
sets are compared element by element as decoded values, ignoring what only the encoding
decides: group 0002, group lengths (gggg,0000), Data Set Trailing Padding (FFFC,FFFC), and,
when the pixel data compare equal decoded, the Photometric Interpretation and Planar
Configuration a codec chose. Pixel data are compared decoded, one frame at a time, so memory
holds two frames whatever the object's size. Whatever cannot be compared (a frame
that does not decode) counts as different: the caller then follows ``on_conflict``.
"""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filereader import dcmread
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from nubis.dicom.frame_codec import frame_array, number_of_frames
from nubis.errors import NubisError

__all__ = ["same_instance"]

log = logging.getLogger(__name__)

_PIXEL_GROUP = 0x7FE0
# PS3.10 7.2: padding without DICOM-defined meaning, which re-encoders add or drop.
_TRAILING_PADDING = 0xFFFCFFFC
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
# Values a codec sets for the pixel data it writes: equal pixels decoded make them equal too.
_CODEC_CHOSEN = frozenset({0x00280004, 0x00280006})
# Values larger than this stay in the file until compared (pixel data never loads whole).
_DEFER = 1 << 16


def same_instance(stored: BinaryIO, received: BinaryIO) -> bool:
    """Whether ``received`` is ``stored`` in another encoding (same values, pixels decoded).

    Both are seekable PS3.10 files, already inspected at ingest; their positions are not kept.
    """
    try:
        a = dcmread(stored, defer_size=_DEFER)
        b = dcmread(received, defer_size=_DEFER)
        if not _same_items(a, b, top_level=True):
            return False
        return _same_pixels(stored, a, received, b)
    except (NubisError, ValueError, TypeError, AttributeError, KeyError, OSError, EOFError):
        # Not comparable is not the same: the caller keeps treating it as a conflict.
        log.info("re-sent instance not comparable with the stored one; taken as different")
        return False


def _compared_tags(ds: Dataset, *, top_level: bool) -> set[int]:
    return {
        int(tag)
        # keys(), not the Dataset itself: iterating it converts (and loads) every element.
        for tag in ds.keys()  # noqa: SIM118
        if tag.element != 0  # group lengths (PS3.5 7.2) only describe the encoding
        and tag != _TRAILING_PADDING
        and not (top_level and (tag.group == 0x0002 or tag.group == _PIXEL_GROUP))
        and not (top_level and int(tag) in _CODEC_CHOSEN)
    }


def _same_items(a: Dataset, b: Dataset, *, top_level: bool = False) -> bool:
    tags = _compared_tags(a, top_level=top_level)
    if tags != _compared_tags(b, top_level=top_level):
        return False
    return all(_same_value(a[tag].value, b[tag].value) for tag in sorted(tags))


def _same_value(x: Any, y: Any) -> bool:
    if isinstance(x, Sequence) or isinstance(y, Sequence):
        return (
            isinstance(x, Sequence)
            and isinstance(y, Sequence)
            and len(x) == len(y)
            and all(_same_items(i, j) for i, j in zip(x, y, strict=True))
        )
    if isinstance(x, MultiValue) or isinstance(y, MultiValue):
        xs, ys = list(_values(x)), list(_values(y))
        return len(xs) == len(ys) and all(_same_value(i, j) for i, j in zip(xs, ys, strict=True))
    if isinstance(x, bytes) != isinstance(y, bytes):
        # An element pydicom read as UN (implicit VR, unknown private tag) against the same
        # element with its VR: the bytes of the text, padding aside.
        raw, text = (x, y) if isinstance(x, bytes) else (y, x)
        return raw.rstrip(b" \x00") == str(text).rstrip(" \x00").encode("latin-1", "replace")
    return bool(x == y)


def _values(value: Any) -> list[Any]:
    return list(value) if isinstance(value, MultiValue) else [value]


def _same_pixels(fa: BinaryIO, a: Dataset, fb: BinaryIO, b: Dataset) -> bool:
    tags_a = {int(t) for t in a.keys() if t.group == _PIXEL_GROUP}  # noqa: SIM118
    tags_b = {int(t) for t in b.keys() if t.group == _PIXEL_GROUP}  # noqa: SIM118
    # The offset tables (7FE0,0001/0002) belong to an encapsulated encoding only.
    pixels_a, pixels_b = tags_a & _PIXEL_TAGS, tags_b & _PIXEL_TAGS
    if pixels_a != pixels_b:
        return False
    if not pixels_a:
        return all(a.get(t) == b.get(t) for t in _CODEC_CHOSEN)
    frames = number_of_frames(a)
    if frames != number_of_frames(b):
        return False
    for index in range(frames):
        # Decoded as RGB where the codec stored YCbCr, so a codec's colour space compares too.
        if not np.array_equal(frame_array(fa, a, index), frame_array(fb, b, index)):
            return False
    return True
