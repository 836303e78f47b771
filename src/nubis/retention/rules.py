"""Retention rules: how long a study is kept, read from a TOML file (``retention_rules``).

Each ``[[rule]]`` names what it covers (``tenant``, ``modality``, ``sop_class``; absent:
everything) and how long what it covers is kept: ``keep_years`` after ``after`` (the
``study_date``, the patient's ``last_study``, the study's ``last_access``, or when it was
``stored``), and optionally not before the patient turns ``until_age``. A study is due once
every rule covering it has expired: the longest retention wins, so a rule without filters is
the minimum every study keeps, and a study no rule covers is kept for ever. Pure: the index's
values in, a date out (nubis.retention.evaluate reads them).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

__all__ = ["AFTER", "Rule", "StudyFacts", "due_date", "load_rules", "parse_rules"]

AFTER = ("study_date", "last_study", "last_access", "stored")
_KEYS = {"name", "tenant", "modality", "sop_class", "keep_years", "after", "until_age"}


@dataclass(frozen=True)
class Rule:
    name: str
    keep_years: int
    after: str = "study_date"
    tenant: str | None = None
    modality: str | None = None
    sop_class: str | None = None
    until_age: int | None = None

    def covers(self, facts: StudyFacts) -> bool:
        return (
            (self.tenant is None or self.tenant == facts.tenant)
            and (self.modality is None or self.modality in facts.modalities)
            and (self.sop_class is None or self.sop_class in facts.sop_classes)
        )

    def expires(self, facts: StudyFacts) -> date | None:
        """The first day the rule no longer keeps the study; None: not computable (no birth
        date for ``until_age``), so the study is kept."""
        start = {
            "study_date": facts.study_date or facts.stored,
            "last_study": facts.last_study or facts.study_date or facts.stored,
            "last_access": max(facts.last_access or facts.stored, facts.stored),
            "stored": facts.stored,
        }[self.after]
        end = _plus_years(start, self.keep_years)
        if self.until_age is not None:
            if facts.birth_date is None:
                return None
            end = max(end, _plus_years(facts.birth_date, self.until_age))
        return end


@dataclass(frozen=True)
class StudyFacts:
    """What the rules read of a study (dates as the index holds them, parsed)."""

    tenant: str
    modalities: frozenset[str]
    sop_classes: frozenset[str]
    study_date: date | None
    last_study: date | None
    last_access: date | None
    stored: date
    birth_date: date | None


def due_date(rules: list[Rule], facts: StudyFacts) -> tuple[date, Rule] | None:
    """When the study is due and the rule that kept it longest; None when no rule covers it
    or one cannot say (kept)."""
    latest: tuple[date, Rule] | None = None
    for rule in rules:
        if not rule.covers(facts):
            continue
        end = rule.expires(facts)
        if end is None:
            return None
        if latest is None or end > latest[0]:
            latest = (end, rule)
    return latest


def _plus_years(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February in a year without one: kept until 1 March
        return date(day.year + years, 3, 1)


def load_rules(path: Path | None) -> list[Rule]:
    """The rules in ``path``; none when it is None or absent (nothing expires)."""
    if path is None or not path.exists():
        return []
    try:
        document = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return parse_rules(document, str(path))


def parse_rules(document: dict[str, Any], origin: str = "retention rules") -> list[Rule]:
    """Rules from a parsed TOML document; ValueError names the rule and what is wrong."""
    items = document.get("rule", [])
    unknown = set(document) - {"rule"}
    if unknown or not isinstance(items, list):
        raise ValueError(f"{origin}: expected [[rule]] tables only, found {sorted(unknown)}")
    rules: list[Rule] = []
    for number, item in enumerate(items, start=1):
        where = f"{origin}: rule {number}"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected a table")
        if extra := set(item) - _KEYS:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        name = item.get("name", f"rule-{number}")
        keep = item.get("keep_years")
        if not isinstance(keep, int) or isinstance(keep, bool) or not 0 < keep <= 200:
            raise ValueError(f"{where} ({name}): keep_years must be a whole number of years, 1-200")
        after = item.get("after", "study_date")
        if after not in AFTER:
            raise ValueError(f"{where} ({name}): after must be one of {', '.join(AFTER)}")
        age = item.get("until_age")
        if age is not None and (not isinstance(age, int) or isinstance(age, bool) or age <= 0):
            raise ValueError(f"{where} ({name}): until_age must be a whole number of years")
        texts = {k: item.get(k) for k in ("tenant", "modality", "sop_class")}
        for key, value in texts.items():
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{where} ({name}): {key} must be non-empty text")
        rules.append(
            Rule(
                str(name),
                keep,
                after,
                texts["tenant"],
                texts["modality"],
                texts["sop_class"],
                age,
            )
        )
    return rules
