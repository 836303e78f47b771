"""Retention rules (nubis.retention.rules): which rule keeps a study longest, and until when.

Pure: facts in, a date out, so every boundary is checked without an archive.
"""

from __future__ import annotations

from datetime import date

import pytest

from nubis.retention.rules import Rule, StudyFacts, due_date, parse_rules


def facts(**values: object) -> StudyFacts:
    base: dict[str, object] = {
        "tenant": "default",
        "modalities": frozenset({"CT"}),
        "sop_classes": frozenset({"1.2.840.10008.5.1.4.1.1.2"}),
        "study_date": date(2020, 6, 15),
        "last_study": None,
        "last_access": None,
        "stored": date(2020, 6, 20),
        "birth_date": date(1960, 1, 1),
    }
    return StudyFacts(**{**base, **values})  # type: ignore[arg-type]


def test_the_longest_covering_rule_wins() -> None:
    rules = [Rule("floor", 5), Rule("ct", 10, modality="CT"), Rule("mr", 30, modality="MR")]
    assert due_date(rules, facts()) == (date(2030, 6, 15), rules[1])


def test_a_study_no_rule_covers_is_kept() -> None:
    assert due_date([Rule("mr", 1, modality="MR")], facts()) is None
    assert due_date([Rule("other", 1, tenant="other")], facts()) is None
    assert due_date([Rule("sr", 1, sop_class="1.2.840.10008.5.1.4.1.1.88.11")], facts()) is None


def test_until_age_keeps_a_child_past_the_years_and_unknown_birth_keeps_it() -> None:
    rule = Rule("child", 10, after="last_study", until_age=28)
    child = facts(birth_date=date(2010, 3, 1), last_study=date(2015, 1, 1))
    assert due_date([rule], child) == (date(2038, 3, 1), rule)
    assert due_date([rule], facts(birth_date=None)) is None


def test_counting_from_last_access_and_29_february() -> None:
    rule = Rule("read", 2, after="last_access")
    assert due_date([rule], facts(last_access=date(2024, 2, 29)))[0] == date(2026, 3, 1)  # type: ignore[index]
    # Never read: counts from when it was stored.
    assert due_date([rule], facts())[0] == date(2022, 6, 20)  # type: ignore[index]
    # Without a Study Date a study_date rule counts from when it was stored.
    assert due_date([Rule("d", 1)], facts(study_date=None))[0] == date(2021, 6, 20)  # type: ignore[index]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"rule": [{"name": "x"}]}, "keep_years must be a whole number"),
        ({"rule": [{"keep_years": 10, "after": "birth"}]}, "after must be one of"),
        ({"rule": [{"keep_years": 10, "keep": 1}]}, "unknown key(s) keep"),
        ({"rule": [{"keep_years": True}]}, "keep_years must be a whole number"),
        ({"rule": [{"keep_years": 10, "until_age": -1}]}, "until_age must be"),
        ({"rule": [{"keep_years": 10, "modality": ""}]}, "modality must be non-empty"),
        ({"rules": []}, "expected [[rule]] tables only"),
    ],
)
def test_bad_rules_are_named(document: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=None) as caught:
        parse_rules(document, "retention.toml")
    assert message in str(caught.value) and "retention.toml" in str(caught.value)


def test_a_rules_file_parses() -> None:
    rules = parse_rules(
        {"rule": [{"name": "ct", "modality": "CT", "keep_years": 10, "until_age": 28}]}
    )
    assert rules == [Rule("ct", 10, "study_date", None, "CT", None, 28)]
