"""DICOM JSON values (PS3.18 Annex F.2) straight from an element's raw bytes.

pydicom's own ``to_json_dict`` builds a full ``DataElement`` (with value objects such as
``DSfloat`` and ``PersonName``) first; decoding the raw bytes straight to JSON values is several
times faster, which matters because every stored object goes through it at ingest, by either of
the readers of :mod:`nubis.dicom.inspect` and :mod:`nubis.dicom.fast_parse`.
"""

from __future__ import annotations

import base64
import codecs
import struct
from collections.abc import Callable, MutableSequence, Sequence
from math import isfinite
from typing import Any

from pydicom.charset import decode_bytes, default_encoding, python_encoding

__all__ = [
    "BULK_URI_MARKER",
    "BULK_VRS",
    "DECODED_VRS",
    "DEFAULT_CODEC",
    "VALUE_DECODERS",
    "ValueDecoder",
    "element_json",
]

BULK_URI_MARKER = "nubis-bulk:"
"""Prefix of every ``BulkDataURI`` in the metadata JSON of ingest.

The serving layer turns the placeholders into real URLs by replacing ``"BulkDataURI":"nubis-bulk:``
with ``"BulkDataURI":"<url prefix>``; the bulk path follows the marker.
"""

# pydicom's default repertoire is ISO 8859-1 under an alias that Python looks up in its codec
# registry on every decode; "latin1" names the same codec and is decoded without the look-up.
DEFAULT_CODEC = (
    "latin1" if codecs.lookup(default_encoding) == codecs.lookup("latin1") else default_encoding
)
# Values of these VRs longer than the bulk threshold are bulk data (PS3.18 8.6.1.1).
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
# Per VR: struct code, width, and the Struct of one little endian value.
_NUMBER_FORMATS = {
    vr: (code, width, struct.Struct(f"<{code}"))
    for vr, code, width in (
        ("US", "H", 2),
        ("SS", "h", 2),
        ("UL", "L", 4),
        ("SL", "l", 4),
        ("UV", "Q", 8),
        ("SV", "q", 8),
        ("FL", "f", 4),
        ("FD", "d", 8),
    )
}
# PS3.5 Table 6.2-1: these never depend on (0008,0005) Specific Character Set, and the spaces or
# nulls around their values are padding.
_PLAIN_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
_TEXT_VRS = frozenset({"SH", "LO", "UC"})
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})
# Where an ISO 2022 code extension ends within a value (PS3.5 6.1.2.5.3): at the value
# delimiter of a multi-valued element. pydicom compares them with the bytes of the value.
_TEXT_DELIMITERS = {ord("\\")}
_ESC = b"\x1b"  # starts a code extension (PS3.5 6.1.2.5.3)
# Python codecs of pydicom's character sets that decode bytes below 0x80 as ASCII, one byte
# per character whatever surrounds them (no ISO 2022 shifts).
_ASCII = bytes(range(0x80))
_ASCII_COMPATIBLE = frozenset(
    name
    for name in {default_encoding, *python_encoding.values()}
    if not name.lower().startswith("iso2022") and _ASCII.decode(name) == _ASCII.decode("ascii")
)
_FLOAT_VRS = frozenset({"FL", "FD"})
# Text whose bytes (0008,0005) Specific Character Set says how to decode (PS3.5 6.1.2.3).
DECODED_VRS = _TEXT_VRS | _SINGLE_TEXT_VRS | {"PN"}


def element_json(
    vr: str, value: bytes | None, encodings: Sequence[str], *, little_endian: bool = True
) -> dict[str, Any]:
    """Encode one element in the DICOM JSON model (PS3.18 F.2.2 to F.2.7).

    Values are the same as pydicom's, except that insignificant spaces are trimmed and empty
    values inside a multi-valued element are ``null`` (PS3.18 F.2.5). ``ValueError``,
    ``struct.error``, ``UnicodeError`` or ``LookupError`` when the bytes are not what ``vr``
    says.
    """
    if not value:
        return {"vr": vr}
    if not little_endian and (vr in _NUMBER_FORMATS or vr == "AT"):
        return _big_endian_numbers(vr, value)
    decode = VALUE_DECODERS.get(vr)
    if decode is None:
        raise ValueError(f"no fast JSON encoding for VR {vr}")
    return decode(vr, value, encodings)


def _plain_strings(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    text = value.decode(DEFAULT_CODEC)
    if "\\" in text:
        return _values(vr, [v.strip(" \x00") or None for v in text.split("\\")])
    text = text.strip(" \x00")
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


def _decimal_strings(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    number = _integer if vr == "IS" else _decimal
    text = value.decode(DEFAULT_CODEC)
    if "\\" in text:
        return _values(vr, [number(v) for v in text.split("\\")])
    single = number(text)
    return {"vr": vr, "Value": [single]} if single is not None else {"vr": vr}


def _binary_numbers(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    code, width, single = _NUMBER_FORMATS[vr]
    if len(value) == width:
        values = list(single.unpack(value))
    else:
        count, rest = divmod(len(value), width)
        if rest:
            raise ValueError(f"{len(value)} bytes is not a whole number of {vr} values")
        values = list(struct.unpack(f"<{count}{code}", value))
    if vr in _FLOAT_VRS:
        values = [_json_float(v) for v in values]
    return {"vr": vr, "Value": values}


def _big_endian_numbers(vr: str, value: bytes) -> dict[str, Any]:
    if vr == "AT":
        return {"vr": vr, "Value": _tags(value, ">")}
    code, width, _ = _NUMBER_FORMATS[vr]
    count, rest = divmod(len(value), width)
    if rest:
        raise ValueError(f"{len(value)} bytes is not a whole number of {vr} values")
    values: list[Any] = list(struct.unpack(f">{count}{code}", value))
    if vr in _FLOAT_VRS:
        values = [_json_float(v) for v in values]
    return {"vr": vr, "Value": values}


def _inline_binary(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}


def _texts(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    text = _decoded(value, encodings)
    if "\\" in text:
        return _values(vr, [v.rstrip(" \x00") or None for v in text.split("\\")])
    text = text.rstrip(" \x00")
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


def _single_text(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    text = _decoded(value, encodings).rstrip(" \x00")
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


def _uri(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    text = value.decode(DEFAULT_CODEC).rstrip(" \x00")
    return {"vr": vr, "Value": [text]} if text else {"vr": vr}


def _person_name_values(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    if _ESC not in value:
        text = _decoded(value, encodings).rstrip(" \x00")
        if "\\" not in text and "=" not in text:
            # The common case: one name, alphabetic only.
            return {"vr": vr, "Value": [{"Alphabetic": text}]} if text else {"vr": vr}
    return _values(vr, _person_names(value, encodings))


def _attribute_tags(vr: str, value: bytes, encodings: Sequence[str]) -> dict[str, Any]:
    return {"vr": vr, "Value": _tags(value, "<")}


def _tags(value: bytes, order: str) -> list[str]:
    count, rest = divmod(len(value), 4)
    if rest:
        raise ValueError(f"{len(value)} bytes is not a whole number of AT values")
    numbers = struct.unpack(f"{order}{count * 2}H", value)
    return [f"{numbers[i]:04X}{numbers[i + 1]:04X}" for i in range(0, len(numbers), 2)]


def _values(vr: str, values: list[Any]) -> dict[str, Any]:
    if len(values) == 1 and values[0] is None:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _decoded(value: bytes, encodings: Sequence[str]) -> str:
    """The text as pydicom decodes it; ASCII bytes read alike in every character set without
    code extensions, so those skip pydicom's decoder."""
    if value.isascii() and encodings[0] in _ASCII_COMPATIBLE and _ESC not in value:
        return value.decode("ascii")
    return decode_bytes(value, encodings, _TEXT_DELIMITERS)


ValueDecoder = Callable[[str, bytes, Sequence[str]], dict[str, Any]]
VALUE_DECODERS: dict[str, ValueDecoder] = {
    **dict.fromkeys(_PLAIN_STRING_VRS, _plain_strings),
    "DS": _decimal_strings,
    "IS": _decimal_strings,
    **dict.fromkeys(_NUMBER_FORMATS, _binary_numbers),
    **dict.fromkeys(BULK_VRS, _inline_binary),
    **dict.fromkeys(_TEXT_VRS, _texts),
    **dict.fromkeys(_SINGLE_TEXT_VRS, _single_text),
    "UR": _uri,
    "PN": _person_name_values,
    "AT": _attribute_tags,
}
"""Per VR, the DICOM JSON of a non-empty little endian value (what :func:`element_json`
gives), for a reader that has checked the value is not empty."""


def _json_float(number: float) -> float | str | None:
    # JSON has no NaN or infinity; PS3.18 F.2.3.1 leaves them out, so keep them as text rather
    # than emit the invalid JSON that json.dumps would.
    return number if isfinite(number) else str(number)


def _decimal(text: str) -> float | str | None:
    """A DS value (PS3.5 6.2) as a JSON number; one that is not a finite number is kept as the
    text that was sent rather than lost."""
    text = text.strip(" \x00")
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return number if isfinite(number) else text


def _integer(text: str) -> int | float | str | None:
    """An IS value (PS3.5 6.2); "1.0" and the like are accepted by pydicom, so here too when
    integral."""
    text = text.strip(" \x00")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    if not isfinite(number):
        return text
    return int(number) if number.is_integer() else number


def _person_names(value: bytes, encodings: Sequence[str]) -> list[dict[str, str] | None]:
    """Split PN values into component groups (PS3.5 6.2, PS3.18 F.2.2)."""
    if b"\x1b" in value:
        # ISO 2022 code extensions may differ per component group: pydicom knows how to decode.
        from pydicom.values import convert_PN

        converted = convert_PN(value, list(encodings))
        names = converted if isinstance(converted, MutableSequence) else [converted]
        groups = [list(name.components) if name else [] for name in names]
    else:
        text = _decoded(value, encodings).rstrip(" \x00")
        groups = [name.split("=") if name else [] for name in text.split("\\")]
    return [_name_groups(g) for g in groups]


def _name_groups(groups: list[str] | list[Any]) -> dict[str, str] | None:
    keys = ("Alphabetic", "Ideographic", "Phonetic")
    named = {k: str(g).rstrip(" ") for k, g in zip(keys, groups, strict=False) if g}
    return named or None
