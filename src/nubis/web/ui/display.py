"""DICOM JSON values as people read them: names, dates, times, sizes.

Values are returned as plain text; the templates escape them (Jinja2 autoescape), so a name
such as ``<script>`` is shown as those characters, never markup.
"""

from __future__ import annotations

from typing import Any

__all__ = ["date", "first", "number", "person_name", "size", "text", "time"]


def first(item: dict[str, Any], tag: str) -> Any:
    """The first value of attribute ``tag`` (eight hex digits) of a DICOM JSON object."""
    values = (item.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def text(item: dict[str, Any], tag: str) -> str:
    """Every value of ``tag`` joined with backslashes, as DICOM writes multiple values."""
    values = (item.get(tag) or {}).get("Value") or []
    return "\\".join("" if v is None else str(v) for v in values)


def person_name(item: dict[str, Any], tag: str) -> str:
    """A PN value as "Family, Given Middle Prefix Suffix" (the alphabetic group, else the
    ideographic or phonetic one)."""
    value = first(item, tag)
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    group = value.get("Alphabetic") or value.get("Ideographic") or value.get("Phonetic") or ""
    family, _, rest = str(group).partition("^")
    others = " ".join(part for part in rest.split("^") if part)
    return f"{family}, {others}" if family and others else family or others


def date(item: dict[str, Any], tag: str) -> str:
    """A DA value as YYYY-MM-DD; anything else as stored."""
    value = str(first(item, tag) or "")
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def time(item: dict[str, Any], tag: str) -> str:
    """A TM value as HH:MM[:SS]; anything else as stored."""
    value = str(first(item, tag) or "")
    digits = value.split(".")[0]
    if digits.isdigit() and len(digits) in (2, 4, 6):
        return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))
    return value


def number(item: dict[str, Any], tag: str) -> int | None:
    value = first(item, tag)
    return int(value) if isinstance(value, int | float) else None


def size(count: int) -> str:
    """A byte count in binary units (1 KiB = 1024 bytes), three significant figures."""
    if count < 1024:
        return f"{count} bytes"
    amount = count / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if amount < 1024:
            return _amount(amount, unit)
        amount /= 1024
    return _amount(amount, "TiB")


def _amount(amount: float, unit: str) -> str:
    return f"{amount:.3g} {unit}" if amount < 100 else f"{amount:.0f} {unit}"
