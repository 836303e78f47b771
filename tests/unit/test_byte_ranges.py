"""The Range header of bulk data requests, as RFC 9110 14 reads it (single_byte_range)."""

from __future__ import annotations

import pytest

from nubis.errors import RangeNotSatisfiable
from nubis.web.dicomweb.byte_ranges import single_byte_range


@pytest.mark.parametrize(
    ("header", "length", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=90-", 100, (90, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=-500", 100, (0, 99)),  # a suffix longer than the value is all of it (14.1.2)
        ("bytes=95-500", 100, (95, 99)),  # a last-pos past the end is clipped (14.1.2)
        (" bytes = 3-4 ", 100, (3, 4)),
        ("bytes=3-4, ,", 100, (3, 4)),  # empty list elements are ignored (5.6.1)
        ("bytes=3-4,200-", 100, (3, 4)),  # one satisfiable range of the set
        ("bytes=0-1,5-6", 100, None),  # several: ignored, the whole value (14.2 MAY ignore)
        ("bytes=5-" + "9" * 5000, 100, (5, 99)),  # a hostile last-pos is clipped, not parsed
        ("bytes=-" + "9" * 5000, 100, (0, 99)),
        ("bytes=00000000000000000000000000007-8", 100, (7, 8)),
        ("items=0-1", 100, None),  # unknown range unit: MUST be ignored (14.2)
        ("", 100, None),
    ],
)
def test_served_or_ignored(header: str, length: int, expected: tuple[int, int] | None) -> None:
    assert single_byte_range(header, length) == expected


@pytest.mark.parametrize(
    ("header", "length"),
    [
        ("bytes=100-", 100),  # starts past the end
        ("bytes=" + "9" * 5000 + "-", 100),
        ("bytes=0-", 0),  # nothing of an empty value is satisfiable
        ("bytes=-0", 100),
        ("bytes=9-3", 100),  # invalid: last before first (14.1.2)
        ("bytes=1-2-3", 100),
        ("bytes=0x10-", 100),
        ("bytes=", 100),
        ("bytes", 100),
    ],
)
def test_invalid_or_unsatisfiable(header: str, length: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as raised:
        single_byte_range(header, length)
    assert raised.value.http_headers() == {"content-range": f"bytes */{length}"}
    assert raised.value.http_status == 416
