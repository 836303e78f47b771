"""Replacement values: dummies consistent with the VR (action D), dates moved by a patient's
shift (the Modified Dates Option, E.3.6), and free text cleaned of the object's identifying
values (action C on descriptors and text, E.3.5)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date, timedelta

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})
DUMMY_TEXT = "ANONYMIZED"
# Numbers are 1, not 0: frame numbers and item identifiers start at 1.
_DUMMIES = {
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "DS": "1",
    "IS": "1",
}
# A value shorter than this is not looked for in free text: "M" or "12" would erase too much.
_MIN_IDENTIFIER = 3


def dummy(elem: DataElement) -> object:
    """The dummy of each of the element's values, as many as it has (a point's coordinates
    stay a point)."""
    one = _dummy(elem)
    return [one] * elem.VM if elem.VM > 1 and elem.VR not in _BYTES_VRS else one


_BYTES_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})


def _dummy(elem: DataElement) -> object:
    """A non-empty value of the element's VR that identifies no one (PS3.15 E.1.1, action D);
    sequences are the engine's (items of the same structure, every value a dummy)."""
    vr = elem.VR
    if vr in _DUMMIES:
        return _DUMMIES[vr]
    if vr in TEXT_VRS:
        return DUMMY_TEXT
    if vr in NUMBER_VRS:
        return 1
    return b"\x00\x00"


def empty(elem: DataElement) -> object:
    """The zero-length value of the element's VR (action Z)."""
    if elem.VR == "SQ":
        return Sequence()
    if elem.VR in TEXT_VRS or elem.VR in _DUMMIES or elem.VR == "UI":
        return ""
    if elem.VR in NUMBER_VRS:
        return None
    return b""


def shift_date(value: str, days: int) -> str:
    """A DA value moved by ``days``; an unreadable date becomes empty, never kept as it was."""
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return moved.strftime("%Y%m%d")


def shift_datetime(value: str, days: int) -> str:
    """A DT value with its date moved by ``days`` and its time and offset kept."""
    text = value.strip()
    moved = shift_date(text[:8], days)
    return moved + text[8:] if moved else ""


def shift_values(elem: DataElement, days: int) -> object:
    shift = shift_date if elem.VR == "DA" else shift_datetime
    values = elem.value if elem.VM > 1 else [elem.value]
    moved = [shift(str(v), days) for v in values if v not in (None, "")]
    return moved if len(moved) > 1 else (moved[0] if moved else "")


class Scrubber:
    """Removes the object's identifying values wherever they appear inside free text."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        words = sorted(
            {w.strip() for w in identifiers if len(w.strip()) >= _MIN_IDENTIFIER},
            key=len,
            reverse=True,
        )
        self._pattern = (
            re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE) if words else None
        )

    def clean(self, text: str) -> str:
        if self._pattern is None:
            return text
        return " ".join(self._pattern.sub(" ", text).split())


def identifying_strings(dataset: Dataset, identifying_tags: frozenset[int]) -> list[str]:
    """The values of ``identifying_tags`` in ``dataset`` and its sequences, person names also
    by component, dates also in their written forms. Only those elements and sequences are
    decoded."""
    found: list[str] = []
    for tag in dataset.keys():  # noqa: SIM118 (iterating a Dataset decodes every element)
        raw = dataset.get_item(tag)
        if raw is None or (tag not in identifying_tags and raw.VR not in ("SQ", None)):
            continue
        elem = dataset[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                found += identifying_strings(item, identifying_tags)
            continue
        if tag not in identifying_tags or elem.value in (None, ""):
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        for value in values:
            text = str(value)
            found.append(text)
            if elem.VR == "PN":
                found += re.split(r"[\^= ]+", text)
            elif elem.VR == "DA" and len(text) == 8:
                found += [
                    f"{text[:4]}-{text[4:6]}-{text[6:]}",
                    f"{text[6:]}.{text[4:6]}.{text[:4]}",
                ]
    return found
