"""De-identification profiles, declared in TOML and checked with errors that name what is wrong.

A profile names the PS3.15 E.3 options it applies, the range of the per-patient date shift (the
Modified Dates Option), what happens to objects that may carry burned-in text, and extra rules
per tag that override Table E.1-1. The format is in docs/deidentification.md; the package ships
``profiles/default.toml``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydicom.datadict import tag_for_keyword

from nubis.deid.table import TABLE_OPTIONS
from nubis.errors import BadRequest

BURNED_IN_POLICIES = ("exclude", "blank")
RULE_ACTIONS = ("K", "X", "Z", "D", "C")
# Modalities and storage classes that usually carry burned-in text when Burned In Annotation
# (0028,0301) is absent: ultrasound, secondary capture (screenshots, scanned documents) and
# others a profile may add (PS3.15 E.3.1 leaves the judgement to the de-identifier).
DEFAULT_SUSPECT_MODALITIES = ("US", "IVUS", "OT", "DOC", "SC")
DEFAULT_SUSPECT_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
    "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF Storage
)
_TOP_KEYS = {"name", "version", "description", "options", "dates", "burned_in", "rules"}
_REGION_KEYS = {"manufacturer", "model", "rows", "columns", "rectangles"}


class ProfileError(BadRequest):
    """A profile that cannot be applied: the reason names the key and what is wrong."""


@dataclass(frozen=True)
class Rectangle:
    """A region of pixels to zero: column and row of its top-left corner, width, height."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class DeviceRegions:
    """Where one device burns text into its images of one size (Clean Pixel Data, E.3.1)."""

    manufacturer: str
    model: str | None
    rows: int
    columns: int
    rectangles: tuple[Rectangle, ...]

    def matches(self, manufacturer: str, model: str, rows: int, columns: int) -> bool:
        return (
            self.manufacturer.casefold() == manufacturer.strip().casefold()
            and (self.model is None or self.model.casefold() == model.strip().casefold())
            and (self.rows, self.columns) == (rows, columns)
        )


@dataclass(frozen=True)
class BurnedIn:
    policy: str = "exclude"
    suspect_modalities: tuple[str, ...] = DEFAULT_SUSPECT_MODALITIES
    suspect_sop_classes: tuple[str, ...] = DEFAULT_SUSPECT_SOP_CLASSES
    regions: tuple[DeviceRegions, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    version: str
    options: frozenset[str]
    shift_days: tuple[int, int] = (-3650, -1)
    burned_in: BurnedIn = field(default_factory=BurnedIn)
    rules: Mapping[int, str] = field(default_factory=dict)
    description: str = ""

    @property
    def method(self) -> str:
        """De-identification Method (0012,0063): the profile, at most 64 characters (LO)."""
        return f"nubis {self.name} v{self.version}"[:64]


def parse_profile(text: str) -> Profile:
    """The profile a TOML document declares; ProfileError names the first thing wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile is not valid TOML: {exc}") from None
    return profile_from_mapping(data)


def default_profile_text() -> str:
    """The TOML of the profile the package ships (profiles/default.toml)."""
    return resources.files(__package__).joinpath("profiles/default.toml").read_text("utf-8")


def load_default_profile() -> Profile:
    return parse_profile(default_profile_text())


def profile_from_mapping(data: Mapping[str, Any]) -> Profile:
    _no_unknown(data, _TOP_KEYS, "profile")
    name = _string(data, "name", "profile", required=True)
    version = data.get("version", "1")
    if not isinstance(version, str | int) or isinstance(version, bool):
        raise ProfileError("profile.version must be a string or an integer")
    options = _options(data.get("options", []))
    return Profile(
        name=name,
        version=str(version),
        options=options,
        shift_days=_dates(data.get("dates", {}), options),
        burned_in=_burned_in(data.get("burned_in", {})),
        rules=_rules(data.get("rules", [])),
        description=_string(data, "description", "profile") or "",
    )


def _no_unknown(data: Mapping[str, Any], allowed: set[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where} must be a table")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _string(data: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{where}.{key} must be a non-empty string")
    return value


def _options(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError("profile.options must be a list of option names")
    unknown = sorted(set(value) - set(TABLE_OPTIONS))
    if unknown:
        raise ProfileError(
            f"profile.options: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(TABLE_OPTIONS)}"
        )
    options = frozenset(value)
    if {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"} <= options:
        raise ProfileError(
            "profile.options: retain_longitudinal_full_dates and "
            "retain_longitudinal_modified_dates exclude each other"
        )
    return options


def _dates(value: Any, options: frozenset[str]) -> tuple[int, int]:
    _no_unknown(value, {"shift_days"}, "dates")
    shift = value.get("shift_days", [-3650, -1])
    if (
        not isinstance(shift, list)
        or len(shift) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in shift)
    ):
        raise ProfileError("dates.shift_days must be two integers [lowest, highest]")
    low, high = shift
    if low > high:
        raise ProfileError("dates.shift_days: the lowest shift is above the highest")
    if "retain_longitudinal_modified_dates" in options and low <= 0 <= high:
        # A shift of zero would leave some patients' dates as they were.
        raise ProfileError("dates.shift_days must not include 0 under modified dates")
    if max(abs(low), abs(high)) > 365 * 200:
        raise ProfileError("dates.shift_days: a shift past 200 years leaves the calendar")
    return low, high


def _burned_in(value: Any) -> BurnedIn:
    _no_unknown(
        value, {"policy", "suspect_modalities", "suspect_sop_classes", "regions"}, "burned_in"
    )
    policy = value.get("policy", "exclude")
    if policy not in BURNED_IN_POLICIES:
        raise ProfileError(f"burned_in.policy must be one of {', '.join(BURNED_IN_POLICIES)}")
    modalities = _strings(value, "suspect_modalities", DEFAULT_SUSPECT_MODALITIES)
    classes = _strings(value, "suspect_sop_classes", DEFAULT_SUSPECT_SOP_CLASSES)
    regions = value.get("regions", [])
    if not isinstance(regions, list):
        raise ProfileError("burned_in.regions must be a list of tables")
    return BurnedIn(
        policy=policy,
        suspect_modalities=tuple(m.upper() for m in modalities),
        suspect_sop_classes=classes,
        regions=tuple(_region(r, i) for i, r in enumerate(regions)),
    )


def _strings(value: Mapping[str, Any], key: str, default: Sequence[str]) -> tuple[str, ...]:
    found = value.get(key, list(default))
    if not isinstance(found, list) or not all(isinstance(v, str) and v for v in found):
        raise ProfileError(f"burned_in.{key} must be a list of strings")
    return tuple(found)


def _region(value: Any, index: int) -> DeviceRegions:
    where = f"burned_in.regions[{index}]"
    _no_unknown(value, _REGION_KEYS, where)
    manufacturer = _string(value, "manufacturer", where, required=True)
    model = _string(value, "model", where) or None
    size = []
    for key in ("rows", "columns"):
        n = value.get(key)
        if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= 65535:
            raise ProfileError(f"{where}.{key} must be an integer from 1 to 65535")
        size.append(n)
    rows, columns = size
    rectangles = value.get("rectangles")
    if not isinstance(rectangles, list) or not rectangles:
        raise ProfileError(f"{where}.rectangles must be a non-empty list of [x, y, width, height]")
    found = []
    for j, rect in enumerate(rectangles):
        if (
            not isinstance(rect, list)
            or len(rect) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in rect)
        ):
            raise ProfileError(f"{where}.rectangles[{j}] must be four integers x, y, width, height")
        x, y, width, height = rect
        if width == 0 or height == 0 or x + width > columns or y + height > rows:
            raise ProfileError(f"{where}.rectangles[{j}] is empty or lies outside the image")
        found.append(Rectangle(x, y, width, height))
    return DeviceRegions(manufacturer, model, rows, columns, tuple(found))


def _rules(value: Any) -> dict[int, str]:
    if not isinstance(value, list):
        raise ProfileError("rules must be a list of tables ([[rules]])")
    rules: dict[int, str] = {}
    for i, rule in enumerate(value):
        where = f"rules[{i}]"
        _no_unknown(rule, {"tag", "action"}, where)
        tag = parse_tag(_string(rule, "tag", where, required=True), where)
        action = rule.get("action")
        if action not in RULE_ACTIONS:
            raise ProfileError(f"{where}.action must be one of {', '.join(RULE_ACTIONS)}")
        if tag >> 16 & 1:
            raise ProfileError(f"{where}.tag: private attributes follow retain_safe_private")
        if tag in rules:
            raise ProfileError(f"{where}.tag: a second rule for the same tag")
        rules[tag] = action
    return rules


def parse_tag(text: str, where: str) -> int:
    """A tag written as a keyword, ``(gggg,eeee)`` or eight hex digits."""
    cleaned = text.strip().strip("()").replace(",", "")
    if len(cleaned) == 8:
        try:
            return int(cleaned, 16)
        except ValueError:
            pass
    tag = tag_for_keyword(text.strip())
    if tag is None:
        raise ProfileError(f"{where}.tag: {text!r} is neither a tag nor a DICOM keyword")
    return tag
