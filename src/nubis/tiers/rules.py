"""Tiers, lifecycle rules and prices, as the settings spell them.

``tiers = "hot=STANDARD,cold=STANDARD_IA,archive=GLACIER"``: named tiers, each mapped to a
*target* that the blob store interprets: an S3 storage class, or for the folder store a folder
(an absolute path, or a folder of that name under ``blobs/tiers/``). The first tier is where new
objects are written.

``lifecycle = "modality=MG age<730d -> hot; unread>365d -> archive; unread>30d -> cold"``: rules,
first match wins, a study no rule matches belongs in the first tier. Conditions (all must hold):

- ``modality=MG`` (or ``modality=MG,CR``): a series of the study has one of these modalities;
- ``partition=NAME``: the study is in that tenant;
- ``unread>30d`` / ``unread<30d``: time since the study was last read (retrieved whole, as
  frames, rendered...; its metadata does not count), or since it was stored if never read;
- ``age>2y`` / ``age<730d``: time since the study was first stored;
- ``*``: always.

Durations are a number and a unit: ``h`` hours, ``d`` days, ``w`` weeks, ``y`` 365 days. A study
pinned to a tier by an operator (``nubis storage tier``) stays there whatever the rules say.

``storage_prices = "hot=0.023,cold=0.0125"``: price per GB-month of a tier (in any currency);
a tier without one is priced from :data:`LIST_PRICES` by its target.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "LIST_PRICES",
    "Rule",
    "StudyFacts",
    "Tier",
    "Tiers",
    "parse_prices",
    "parse_rules",
    "parse_tiers",
    "target_tier",
]

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
# S3 classes whose objects must be restored before a GET (Glacier Instant Retrieval need not).
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})

# AWS S3 list prices in us-east-1, USD per GB-month for the first 50 TB of a month, as published
# on aws.amazon.com/s3/pricing (2024). Storage only: requests, retrievals, minimum storage
# durations and transfer are extra. A guide, not a quote: set storage_prices for yours.
LIST_PRICES: dict[str, float] = {
    "STANDARD": 0.023,
    "INTELLIGENT_TIERING": 0.023,
    "STANDARD_IA": 0.0125,
    "ONEZONE_IA": 0.01,
    "GLACIER_IR": 0.004,
    "GLACIER": 0.0036,
    "DEEP_ARCHIVE": 0.00099,
}

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
_UNITS = {"h": HOUR_MS, "d": DAY_MS, "w": 7 * DAY_MS, "y": 365 * DAY_MS}
_DURATION_CONDITION = re.compile(r"(unread|age)([<>])(\d+)([hdwy])\Z")
_VALUE_CONDITION = re.compile(r"(modality|partition)=(\S+)\Z")


@dataclass(frozen=True)
class Tier:
    name: str
    target: str

    @property
    def archived(self) -> bool:
        """Objects here need a restore before they can be read (on S3)."""
        return self.target.upper() in ARCHIVE_CLASSES


@dataclass(frozen=True)
class Tiers:
    """The configured tiers in order; the first is where new objects go."""

    all: tuple[Tier, ...]

    @property
    def default(self) -> Tier:
        return self.all[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.all)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def get(self, name: str) -> Tier:
        for tier in self.all:
            if tier.name == name:
                return tier
        raise KeyError(f"no tier {name!r} (tiers: {', '.join(self.names)})")


def parse_tiers(text: str) -> Tiers:
    """``name=target,...`` into :class:`Tiers`; ValueError names what is wrong."""
    found: list[Tier] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, target = (p.strip() for p in item.partition("="))
        if not sep or not target:
            raise ValueError(f"{item!r}: expected NAME=TARGET (a storage class or a folder)")
        if not _NAME.match(name):
            raise ValueError(f"tier name {name!r}: lower-case letters, digits, - and _")
        if any(t.name == name for t in found):
            raise ValueError(f"tier {name!r} is named twice")
        found.append(Tier(name, target))
    if not found:
        raise ValueError("at least one tier is needed (the one new objects are written to)")
    return Tiers(tuple(found))


@dataclass(frozen=True)
class StudyFacts:
    """What the rules look at, for one study; times in milliseconds since the epoch."""

    partition: str
    modalities: frozenset[str]
    created_at: int
    last_read_at: int | None = None
    pin: str | None = None
    pin_until: int | None = None

    @property
    def last_used(self) -> int:
        return max(self.created_at, self.last_read_at or 0)


@dataclass(frozen=True)
class Rule:
    text: str
    tier: str
    modalities: frozenset[str] | None = None
    partition: str | None = None
    unread_over: int | None = None
    unread_under: int | None = None
    age_over: int | None = None
    age_under: int | None = None

    def matches(self, study: StudyFacts, now: int) -> bool:
        if self.modalities is not None and not (self.modalities & study.modalities):
            return False
        if self.partition is not None and study.partition != self.partition:
            return False
        unread, age = now - study.last_used, now - study.created_at
        return (
            (self.unread_over is None or unread > self.unread_over)
            and (self.unread_under is None or unread < self.unread_under)
            and (self.age_over is None or age > self.age_over)
            and (self.age_under is None or age < self.age_under)
        )


def parse_rules(text: str, tiers: Tiers | None = None) -> tuple[Rule, ...]:
    """Rules separated by ``;`` or new lines, each ``CONDITIONS -> TIER``; see the module."""
    rules = []
    for raw in re.split(r"[;\n]", text):
        line = raw.strip()
        if not line:
            continue
        conditions, arrow, tier = line.rpartition("->")
        tier = tier.strip()
        if not arrow or not tier:
            raise ValueError(f"lifecycle rule {line!r}: expected CONDITIONS -> TIER")
        if tiers is not None and tier not in tiers:
            raise ValueError(
                f"lifecycle rule {line!r}: no tier {tier!r} (tiers: {', '.join(tiers.names)})"
            )
        fields: dict[str, object] = {}
        words = conditions.split()
        if not words:
            raise ValueError(f"lifecycle rule {line!r}: no condition (write * for always)")
        for word in words:
            if word == "*":
                continue
            if m := _VALUE_CONDITION.match(word):
                if m[1] == "modality":
                    fields["modalities"] = frozenset(v for v in m[2].upper().split(",") if v)
                else:
                    fields["partition"] = m[2]
            elif m := _DURATION_CONDITION.match(word):
                bound = "over" if m[2] == ">" else "under"
                fields[f"{m[1]}_{bound}"] = int(m[3]) * _UNITS[m[4]]
            else:
                raise ValueError(
                    f"lifecycle rule {line!r}: cannot read {word!r} (modality=MG, "
                    "partition=NAME, unread>30d, age<2y, *)"
                )
        rules.append(Rule(line, tier, **fields))  # type: ignore[arg-type]
    return tuple(rules)


def target_tier(study: StudyFacts, rules: tuple[Rule, ...], tiers: Tiers, now: int) -> str:
    """The tier ``study`` belongs in now: its pin, else the first matching rule, else the first
    tier. A pin to a tier no longer configured is ignored rather than obeyed blindly."""
    if study.pin in tiers and (study.pin_until is None or study.pin_until > now):
        return study.pin  # type: ignore[return-value]
    for rule in rules:
        if rule.tier in tiers and rule.matches(study, now):
            return rule.tier
    return tiers.default.name


def parse_prices(text: str, tiers: Tiers) -> dict[str, float | None]:
    """Price per GB-month of every tier: ``storage_prices``, else the list price of its
    target; None for a tier priced nowhere (a folder without a price)."""
    given: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = (p.strip() for p in item.partition("="))
        if not sep:
            raise ValueError(f"{item!r}: expected TIER=PRICE")
        if name not in tiers:
            raise ValueError(f"storage_prices: no tier {name!r} (tiers: {', '.join(tiers.names)})")
        try:
            price = float(value)
        except ValueError:
            raise ValueError(f"storage_prices: {value!r} is not a number") from None
        if price < 0:
            raise ValueError(f"storage_prices: {name} has a negative price")
        given[name] = price
    return {t.name: given.get(t.name, LIST_PRICES.get(t.target.upper())) for t in tiers.all}
