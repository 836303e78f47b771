"""The ``analyzers`` setting: which analyzers run on new studies, narrowed how, how many at once.

``ct-qc; acme-lung modality=CT body_part=CHEST,LUNG min_instances=40 concurrency=2`` runs
``ct-qc`` on every study holding what it declares it wants, and ``acme-lung`` only on chest
CT series of at least 40 instances, two studies at a time across every node. Conditions
narrow what the analyzer declares (nubis.analyzers.contract.Wants), never widen it.
A leaf (nubis.config checks the setting with it): no analyzer is loaded here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from nubis.analyzers.contract import Wants

__all__ = ["DEFAULT_CONCURRENCY", "Rule", "parse_rules"]

DEFAULT_CONCURRENCY = 1
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}\Z")
_LISTS = {"modality": "modalities", "body_part": "body_parts", "sop_class": "sop_classes"}


@dataclass(frozen=True)
class Rule:
    analyzer: str
    wants: Wants = field(default_factory=Wants)
    concurrency: int = DEFAULT_CONCURRENCY


def parse_rules(text: str) -> list[Rule]:
    """Rules from the setting's text; ValueError names what is wrong."""
    rules: list[Rule] = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, *conditions = part.split()
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r}: an analyzer name is lower-case letters, digits and hyphens"
            )
        if any(r.analyzer == name for r in rules):
            raise ValueError(f"{name!r} is named twice")
        lists: dict[str, frozenset[str]] = {}
        numbers = {"min_instances": 1, "concurrency": DEFAULT_CONCURRENCY}
        for condition in conditions:
            key, sep, value = condition.partition("=")
            if not sep or not value:
                raise ValueError(f"{name}: {condition!r}: expected KEY=VALUE")
            if key in _LISTS:
                values = [v.strip() for v in value.split(",") if v.strip()]
                lists[_LISTS[key]] = frozenset(
                    v if key == "sop_class" else v.upper() for v in values
                )
            elif key in numbers:
                if not value.isdigit() or int(value) < 1:
                    raise ValueError(f"{name}: {key} must be a whole number >= 1")
                numbers[key] = int(value)
            else:
                known = ", ".join([*_LISTS, *numbers])
                raise ValueError(f"{name}: unknown condition {key!r} (conditions: {known})")
        wants = Wants(**lists, min_instances=numbers["min_instances"])
        rules.append(Rule(name, wants, numbers["concurrency"]))
    return rules
