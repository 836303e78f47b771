"""PS3.15 Table E.1-1, read from the data file generated from the standard's machine-readable
form (scripts/deid_table.py), and the safe private attributes of Table E.3.10-1.

An attribute's action under a profile is the Basic Profile's code, overridden by the code of an
option the profile applies (E.3). Where two applied options name the attribute, Clean (C) wins
over Keep (K): the Retain Device Identity Option keeps a calibration date, the Modified Dates
Option still shifts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

# The options of PS3.15 E.3 whose codes Table E.1-1 carries, in the table file's spelling.
TABLE_OPTIONS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_longitudinal_full_dates",
    "retain_longitudinal_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)

# Rows of the table that stand for many tags (the generator's names for them).
CURVE_GROUPS = "50xxxxxx"
OVERLAY_DATA = "60xx3000"
OVERLAY_COMMENTS = "60xx4000"
PRIVATE = "private"


@dataclass(frozen=True)
class TableRow:
    """One row of Table E.1-1: the Basic Profile's code and the options' codes."""

    tag: str  # eight hex digits, or one of the pattern names above
    name: str
    basic: str
    options: Mapping[str, str]

    def action(self, applied: Iterable[str]) -> str:
        """The code for this attribute when the options ``applied`` are in force."""
        codes = {self.options[o] for o in applied if o in self.options}
        if "C" in codes:
            return "C"
        if "K" in codes:
            return "K"
        return self.basic


@dataclass(frozen=True)
class Table:
    source: str
    source_commit: str
    edition: str
    rows: tuple[TableRow, ...]


@cache
def rows_by_tag() -> dict[int, TableRow]:
    """The rows of Table E.1-1 that name one tag, by tag."""
    return {int(row.tag, 16): row for row in table_e1_1().rows if _is_plain(row.tag)}


def _is_plain(tag: str) -> bool:
    return len(tag) == 8 and all(c in "0123456789abcdefABCDEF" for c in tag)


@cache
def table_e1_1() -> Table:
    """Table E.1-1 as the package ships it."""
    text = resources.files(__package__).joinpath("table_e1_1.json").read_text("utf-8")
    data = json.loads(text)
    rows = tuple(
        TableRow(tag=r["tag"], name=r["name"], basic=r["basic"], options=r["options"])
        for r in data["rows"]
    )
    return Table(data["source"], data["source_commit"], data["edition"], rows)


def pattern_row(name: str) -> TableRow:
    """The row standing for curve groups, overlay data or comments, or private attributes."""
    for row in table_e1_1().rows:
        if row.tag == name:
            return row
    raise KeyError(name)


@dataclass(frozen=True)
class SafePrivate:
    """A safe private attribute: its creator, group and element within the private block."""

    creator: str
    group: int
    element: int
    vr: str


@cache
def safe_private_attributes() -> dict[tuple[str, int, int], SafePrivate]:
    """Table E.3.10-1, keyed by (Private Creator, group, element within the block)."""
    text = resources.files(__package__).joinpath("safe_private.txt").read_text("utf-8")
    found: dict[tuple[str, int, int], SafePrivate] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        creator, group, element, vr = line.split("|")
        entry = SafePrivate(creator, int(group, 16), int(element, 16), vr)
        found[(creator, entry.group, entry.element)] = entry
    return found
