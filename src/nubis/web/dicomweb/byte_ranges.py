"""The Range request header for bulk data (PS3.18 10.4.1.1.5 with RFC 9110 14).

nubis serves one byte range of a value. What RFC 9110 14.2 asks of such a server:

- a range unit other than ``bytes`` MUST be ignored: the whole value is sent;
- a ``bytes`` ranges-specifier that is invalid (14.1.1: a range-spec it cannot read, or one
  whose last position is before its first, 14.1.2) or unsatisfiable (no range starts inside
  the value, or only suffixes of no bytes) SHOULD be answered 416 Range Not Satisfiable with
  ``Content-Range: bytes */<length>`` (15.5.17, 14.4);
- several satisfiable ranges: a server MAY ignore the Range field, and nubis does (no
  multipart/byteranges), sending the whole value with 200.
"""

from __future__ import annotations

import re

from nubis.errors import RangeNotSatisfiable

_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")  # first-pos "-" [ last-pos ]
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")  # "-" suffix-length
# Beyond any real length: what a position of more than 19 digits stands for, so that int() never
# parses a hostile 5,000-digit number (it refuses past 4,300 digits, and is slow before that).
_HUGE = 1 << 64


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= 19 else _HUGE


def single_byte_range(header: str, length: int) -> tuple[int, int] | None:
    """The first and last byte (inclusive) the Range ``header`` asks of a value of ``length``
    bytes, clipped to the value; None when the header is to be ignored (whole value, 200).

    Raises
    ------
    RangeNotSatisfiable
        For an invalid or unsatisfiable ``bytes`` range set; carries ``length``.
    """
    unit, equals, range_set = header.strip().partition("=")
    if unit.strip().lower() != "bytes":
        return None  # RFC 9110 14.2: an unknown range unit is ignored
    shown = header.strip()[:60]
    # 1#range-spec: empty list elements are ignored (RFC 9110 5.6.1).
    specs = [spec.strip() for spec in range_set.split(",") if spec.strip()] if equals else []
    if not specs:
        raise RangeNotSatisfiable(f"Range {shown!r} names no byte range", length=length)
    satisfiable: list[tuple[int, int]] = []
    for spec in specs:
        if int_range := _INT_RANGE.fullmatch(spec):
            first = _position(int_range.group(1))
            last = _position(int_range.group(2)) if int_range.group(2) else None
            if last is not None and last < first:
                raise RangeNotSatisfiable(
                    f"Range {shown!r}: {spec} ends before it starts", length=length
                )
            if first < length:
                satisfiable.append((first, length - 1 if last is None else min(last, length - 1)))
        elif suffix := _SUFFIX_RANGE.fullmatch(spec):
            count = _position(suffix.group(1))
            if count > 0 and length > 0:
                satisfiable.append((max(length - count, 0), length - 1))
        else:
            raise RangeNotSatisfiable(
                f"Range {shown!r}: {spec[:30]!r} is not a byte range (first-last, first-, "
                "or -suffix)",
                length=length,
            )
    if not satisfiable:
        raise RangeNotSatisfiable(
            f"Range {shown!r} lies outside the value's {length} bytes", length=length
        )
    return satisfiable[0] if len(satisfiable) == 1 else None
