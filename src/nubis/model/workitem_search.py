"""Search for workitems (PS3.18 11.9): the query parameters as matches on the workitem columns.

The matching keys are those of PS3.4 Table CC.2.5-3 a worklist client filters on: the state,
priority, worklist label, input readiness, the scheduled start (a DT range), the patient, the
study, and the code value or coding scheme of the scheduled workitem and station name codes.
Keys are given by keyword or tag, sequence keys as ``Sequence.Attribute``; matching follows
PS3.4 C.2.2.2 (single value, a list of UIDs, ``*``/``?`` wildcards on text, ranges on the
date and time). Any other attribute is refused with a 400 naming it, as PS3.18 8.3.4 lets a
server do, so a client never takes an unmatched key for a filter.

The same parser reads the ``filter`` of a Filtered Worklist subscription (PS3.18 11.10.1.2).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from nubis.dicom.uids import is_usable
from nubis.errors import BadRequest
from nubis.model.query import fold_person_name
from nubis.model.workitem import State, start_key


@dataclass(frozen=True)
class Match:
    """One matching key: ``column`` compared as ``kind`` (``exact``, ``wildcard``, ``uids``,
    ``range``) with ``values`` (a range: its low and high ends, either None when open)."""

    column: str
    kind: str
    values: tuple[str | None, ...]


@dataclass(frozen=True)
class WorkitemQuery:
    matches: tuple[Match, ...] = ()
    limit: int = 100
    offset: int = 0
    warnings: tuple[str, ...] = ()


# key path (tags as hex) -> (column, kind)
_KEYS: dict[tuple[str, ...], tuple[str, str]] = {
    ("00741000",): ("state", "state"),
    ("00741200",): ("priority", "exact"),
    ("00741202",): ("worklist_label", "wildcard"),
    ("00404041",): ("input_readiness", "exact"),
    ("00404005",): ("scheduled_start", "range"),
    ("00100020",): ("patient_id", "wildcard"),
    ("00100010",): ("patient_name_folded", "name"),
    ("0020000D",): ("study_uid", "uids"),
    ("00080018",): ("workitem_uid", "uids"),
    ("00404018", "00080100"): ("workitem_code_value", "exact"),
    ("00404018", "00080102"): ("workitem_code_scheme", "exact"),
    ("00404025", "00080100"): ("station_code_value", "exact"),
    ("00404025", "00080102"): ("station_code_scheme", "exact"),
}
_CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_IGNORED = frozenset({"accept", "charset"})
_MAX_VALUE = 256
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}\Z")
_DT_END = re.compile(r"[0-9]{4,14}\Z")
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def _tag(component: str, param: str) -> str:
    if _HEX_TAG.match(component):
        return component.upper()
    tag = tag_for_keyword(component)
    if tag is None:
        shown = param if len(param) <= 64 else param[:61] + "..."
        raise BadRequest(f"{shown!r} is not a DICOM attribute (PS3.18 8.3.4.1)")
    return f"{tag:08X}"


def _name(path: tuple[str, ...]) -> str:
    return ".".join(keyword_for_tag(int(t, 16)) or t for t in path)


def supported_keys() -> list[str]:
    return [_name(path) for path in _KEYS]


def _match(param: str, path: tuple[str, ...], raw: str) -> Match:
    column, kind = _KEYS[path]
    if len(raw) > _MAX_VALUE or _BAD_CHARS.search(raw):
        raise BadRequest(f"the value of {_name(path)} is too long or holds control characters")
    if kind == "state":
        if raw not in {s.value for s in State}:
            raise BadRequest(
                f"{_name(path)} must be one of {', '.join(s.value for s in State)} (PS3.4 CC.1.1)"
            )
        return Match(column, "exact", (raw,))
    if kind == "uids":
        uids = tuple(u for u in raw.replace("\\", ",").split(",") if u)
        if not uids or not all(is_usable(u) for u in uids):
            raise BadRequest(f"{_name(path)} must be a UID or a list of UIDs")
        return Match(column, "uids", uids)
    if kind == "range":
        return Match(column, "range", _range(_name(path), raw))
    if kind == "name":
        return Match(column, "wildcard", (fold_person_name(raw),))
    return Match(column, kind, (raw,))


def _range(name: str, raw: str) -> tuple[str | None, str | None]:
    """A DT value or range (PS3.4 C.2.2.2.5) as the ends of a text range on ``start_key``:
    a value alone is the range it spans at its precision (a date: the whole day)."""
    low, dash, high = raw.partition("-")
    if not dash:
        high = low
    for end in (low, high):
        if end and not _DT_END.match(end.split(".")[0]):
            raise BadRequest(f"{name} must be a DT value or range such as 20260101-20260102")
    if not low and not high:
        raise BadRequest(f"{name} must be a DT value or range such as 20260101-20260102")
    top = None
    if high:
        # The highest instant the given precision covers: 2026 -> 20261231235959.
        digits = high.split(".")[0]
        top = (digits + "1231235959"[max(0, len(digits) - 4) :])[:14]
    return (start_key(low) if low else None, top)


def parse_search(
    params: Sequence[tuple[str, str]], *, max_limit: int, default_limit: int
) -> WorkitemQuery:
    """A :class:`WorkitemQuery` from Search's query parameters (PS3.18 11.9.1.2)."""
    matches: list[Match] = []
    seen: set[tuple[str, ...]] = set()
    limit, offset = default_limit, 0
    warnings: list[str] = []
    for param, raw in params:
        if param in _IGNORED or param == "includefield":
            continue  # every attribute of a workitem is returned
        if param in ("limit", "offset"):
            if not raw.isdigit() or len(raw) > 12:
                raise BadRequest(f"{param} must be a non-negative integer")
            if param == "offset":
                offset = int(raw)
            else:
                limit = int(raw)
                if limit > max_limit:
                    warnings.append(f"limit lowered to {max_limit}, the server's maximum")
                    limit = max_limit
            continue
        if param == "fuzzymatching":
            if raw not in ("true", "false"):
                raise BadRequest("fuzzymatching must be true or false")
            if raw == "true":
                warnings.append("fuzzy matching is not supported: names matched literally")
            continue
        path = tuple(_tag(component, param) for component in param.split("."))
        if path not in _KEYS:
            raise BadRequest(
                f"{_name(path)} is not a matching key of this worklist; "
                f"keys: {', '.join(supported_keys())}"
            )
        if path in seen:
            raise BadRequest(f"{_name(path)} is given more than once")
        seen.add(path)
        if raw == "":
            continue  # universal matching (PS3.4 C.2.2.2.3)
        matches.append(_match(param, path, raw))
    return WorkitemQuery(tuple(matches), max(limit, 1), offset, tuple(warnings))


def parse_filter(text: str) -> WorkitemQuery:
    """The ``filter`` of a Filtered Worklist subscription: ``key=value`` pairs separated by
    commas (PS3.18 11.10.1.2)."""
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        key, eq, raw = part.partition("=")
        if not eq or not key:
            raise BadRequest("filter must be attribute=value pairs separated by commas")
        if key in _CONTROL or key in _IGNORED:
            raise BadRequest(f"{key} is not an attribute and cannot filter a subscription")
        pairs.append((key, raw))
    return parse_search(pairs, max_limit=1, default_limit=1)


__all__ = ["Match", "WorkitemQuery", "parse_filter", "parse_search", "supported_keys"]
