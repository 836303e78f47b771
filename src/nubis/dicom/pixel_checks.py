"""A stored object's pixel module, checked before a decoder reads it; a decoder's failure on
stored data, reported as the client error it is.

Ingest keeps objects as they came: one whose Rows has two values, or whose Bits Allocated is 13,
is stored, and its metadata and stored frames are served as they are. Decoding, rendering and
transcoding its pixels cannot work; pydicom would fail deep inside numpy (``'<' not supported
between 'int' and 'MultiValue'``). :func:`check_pixel_module` names the attribute instead, and
:func:`stored_data_errors` turns whatever pydicom, numpy or Pillow still raise on a stored
object's data into the same kind of answer.

That answer is 406 Not Acceptable (RFC 9110 15.5.7; PS3.18 names no status for it): the object
exists and is served as stored, but has no representation of the kind asked for, a decoded
frame, a rendered image, another transfer syntax. Reasons name attributes, never values. A blob
whose bytes fail their integrity check is not client input: those errors (BlobCorrupted,
BlobUnreadable) and storage faults (OSError, StorageUnavailable) pass through unchanged.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from pydicom.datadict import dictionary_description, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from nubis.errors import NotAcceptable, NubisError

__all__ = ["check_pixel_module", "named_attribute", "stored_data_errors"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_US_MAX = 0xFFFF
_IS_MAX = 2**31 - 1  # PS3.5 6.2: an Integer String is a 32-bit signed integer
_TAG_IN_TEXT = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")


def check_pixel_module(header: Dataset) -> None:
    """Check the Image Pixel module attributes a decoder reads (PS3.3 C.7.6.3).

    Parameters
    ----------
    header : pydicom.dataset.Dataset
        The stored object's data set (pixel data not needed).

    Raises
    ------
    NotAcceptable
        Naming the first attribute that is missing, multi-valued, unreadable or outside what
        PS3.3 C.7.6.3.1 allows: Rows, Columns (1..65535), Samples per Pixel (1 or 3), Bits
        Allocated (1 or a multiple of 8 up to 64), Bits Stored (1..Bits Allocated), Pixel
        Representation and Planar Configuration (0 or 1), Photometric Interpretation, Number of
        Frames (an integer; 0 or empty means one frame).
    """
    for keyword in ("Rows", "Columns"):
        _number(header, keyword, range(1, _US_MAX + 1))
    _number(header, "SamplesPerPixel", (1, 3))
    bits = _number(header, "BitsAllocated", (1, *range(8, 65, 8)))
    _number(header, "BitsStored", range(1, bits + 1), required=False)
    _number(header, "PixelRepresentation", (0, 1), required=False)  # not for float pixels
    _number(header, "PlanarConfiguration", (0, 1), required=False)
    _number(header, "NumberOfFrames", range(_IS_MAX + 1), required=False)
    photometric = _value(header, "PhotometricInterpretation")
    if not isinstance(photometric, str) or not photometric.strip():
        raise _unusable("PhotometricInterpretation", "is missing")


def _number(
    header: Dataset, keyword: str, allowed: range | tuple[int, ...], *, required: bool = True
) -> int:
    value = _value(header, keyword)
    if value is None or value == "":
        if required:
            raise _unusable(keyword, "is missing")
        return 0
    if not isinstance(value, int):
        raise _unusable(keyword, "is not an integer")
    number = int(value)  # a range tests an int subclass (IS) by iterating through it
    if number not in allowed:
        raise _unusable(keyword, f"is {number}")
    return number


def _value(header: Dataset, keyword: str) -> object:
    try:
        value = header.get(keyword)
    except Exception as exc:  # a value pydicom cannot convert (wrong length, unknown VR...)
        raise _unusable(keyword, "cannot be read") from exc
    if isinstance(value, MultiValue | list):
        raise _unusable(keyword, f"has {len(value)} values where one is allowed")
    return value


def _name(tag: int) -> str:
    try:
        description = dictionary_description(tag)
    except KeyError:
        description = "(private or unknown)"
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {description}"


def _unusable(keyword: str, problem: str) -> NotAcceptable:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return NotAcceptable(f"the stored object's {_name(tag)} {problem} (PS3.3 C.7.6.3)")


def stored_data_errors(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Have a function that decodes a stored object report bad data as NotAcceptable.

    ``action`` says what could not be done ("decoded", "rendered", "converted"). The reason
    names the attribute pydicom's error names, if any; the log gets the exception's type,
    never its text (which may quote values).
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return function(*args, **kwargs)
            except (NubisError, OSError):
                raise
            except Exception as exc:
                named = named_attribute(exc)
                log.info("a stored object cannot be %s: %s%s", action, type(exc).__name__, named)
                raise NotAcceptable(
                    f"the stored object cannot be {action}: its data is not what its header "
                    f"says{named}"
                ) from exc

        return guarded

    return decorate


def named_attribute(exc: BaseException) -> str:
    """ ", at (gggg,eeee) Name" for the first tag in the messages of ``exc`` and its causes."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        match = _TAG_IN_TEXT.search(str(seen))
        if match:
            return f", at {_name(int(match.group(1) + match.group(2), 16))}"
        seen = seen.__cause__ or seen.__context__
    return ""
