"""Issue 11: the per-VR decoders of ``nubis.dicom.json_values``, which both readers of
``inspect_file`` share, so that tests/unit/test_fast_parse.py cannot fault them by comparing
the readers. The expected values are those the decoder gave before its shortcuts (ASCII text,
one alphabetic name, ``latin1``): the DICOM JSON model of PS3.18 F.2, insignificant spaces
trimmed, empty values of a multi-valued element as null, non-finite numbers kept as text."""

from __future__ import annotations

from typing import Any

import pytest

from nubis.dicom.json_values import element_json

D = ["iso8859"]  # pydicom's default repertoire
JAPANESE = ["iso8859", "iso2022_jp"]  # with code extensions (PS3.5 6.1.2.5)
CASES: list[tuple[str, bytes, list[str], list[Any] | None]] = [
    ("CS", b"ORIGINAL\\PRIMARY\\ ", D, ["ORIGINAL", "PRIMARY", None]),
    ("DA", b"20240115", D, ["20240115"]),
    ("UI", b"1.2.840.10008.5.1.4.1.1.2\x00", D, ["1.2.840.10008.5.1.4.1.1.2"]),
    ("AE", b"  ", D, None),
    ("DS", b" 1.50\\-2e3\\\\nan \\inf", D, [1.5, -2000.0, None, "nan", "inf"]),
    ("DS", b"abc", D, ["abc"]),
    ("IS", b"1.0 \\7\\1.5\\x", D, [1, 7, 1.5, "x"]),
    ("IS", b" ", D, None),
    ("US", b"\x01\x00", D, [1]),
    ("SS", b"\xff\xff\x02\x00", D, [-1, 2]),
    ("FD", b"\x00\x00\x00\x00\x00\x00\xf0\x7f", D, ["inf"]),
    ("FL", b"\x00\x00\xc0?", D, [1.5]),
    ("AT", b"\x08\x00\x18\x00\x10\x00\x10\x00", D, ["00080018", "00100010"]),
    ("LO", b"caf\xe9 \\ ", D, ["caf\xe9", None]),
    ("LO", b"caf\xc3\xa9\\x", ["UTF8"], ["caf\xe9", "x"]),
    ("SH", b"ab", ["utf_16"], ["\u6261"]),  # ASCII bytes, but not ASCII text
    ("LT", b" line  one\r\nline two \x00", ["latin_1"], [" line  one\r\nline two"]),
    ("UT", b"\\not split\\ ", D, ["\\not split\\"]),
    ("UR", b"http://example.org/a b ", D, ["http://example.org/a b"]),
    ("PN", b"Doe^Jane ", D, [{"Alphabetic": "Doe^Jane"}]),
    (
        "PN",
        b"Yamada^Tarou=\xe5\xb1\xb1\xe7\x94\xb0=^\\Roe",
        ["UTF8"],
        [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "\u5c71\u7530", "Phonetic": "^"},
            {"Alphabetic": "Roe"},
        ],
    ),
    ("PN", b"\\Doe", D, [None, {"Alphabetic": "Doe"}]),
    ("PN", b"  ", D, None),
    (
        "PN",
        b"\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B",
        JAPANESE,
        [{"Alphabetic": "\u5c71\u7530^\u592a\u90ce"}],
    ),
]


@pytest.mark.parametrize(("vr", "value", "encodings", "values"), CASES)
def test_values(vr: str, value: bytes, encodings: list[str], values: list[Any] | None) -> None:
    expected = {"vr": vr} if values is None else {"vr": vr, "Value": values}
    assert element_json(vr, value, encodings) == expected


def test_binary_is_inline() -> None:
    assert element_json("OB", b"\x00\x01\x02", D) == {"vr": "OB", "InlineBinary": "AAEC"}


def test_a_value_that_is_not_what_its_vr_says_is_an_error() -> None:
    with pytest.raises(ValueError, match="whole number"):
        element_json("UL", b"\x01\x02\x03", D)
    with pytest.raises(ValueError, match="no fast JSON encoding"):
        element_json("SQ", b"\x00", D)
