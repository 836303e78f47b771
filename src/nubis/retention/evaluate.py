"""Which studies the retention rules have let go: read from the index a page at a time.

A page is the studies after a study id (``studies.id``, the job's cursor, so a run taken over
by another node resumes where the last one left off), with what the rules read: dates,
modalities, SOP classes (only when a rule names one), the patient's latest study (only when a
rule counts from it) and the last read. Nothing identifying leaves here: candidates carry
UIDs only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select, tuple_

from nubis.index.database import Index
from nubis.index.schema import instances, series, studies, study_lifecycle
from nubis.retention.rules import Rule, StudyFacts, due_date

__all__ = ["Candidate", "due_studies"]

PAGE = 500


@dataclass(frozen=True)
class Candidate:
    """A study past its retention: since when, and the rule that kept it longest."""

    pk: int
    tenant: str
    study_uid: str
    due_since: date
    rule: str


def due_studies(
    index: Index, rules: list[Rule], today: date, *, after_pk: int = 0, page: int = PAGE
) -> Iterator[tuple[int, int, list[Candidate]]]:
    """(last study id of the page, studies read, the page's due studies), page by page."""
    if not rules:
        return
    by_class = any(r.sop_class is not None for r in rules)
    by_patient = any(r.after == "last_study" for r in rules)
    while True:
        with index.reading() as conn:
            rows = conn.execute(
                select(
                    studies.c.id,
                    studies.c.partition,
                    studies.c.study_uid,
                    studies.c.patient_id,
                    studies.c.patient_birth_date,
                    studies.c.study_date,
                    studies.c.modalities,
                    studies.c.created_at,
                    study_lifecycle.c.last_read_at,
                )
                .select_from(
                    studies.outerjoin(study_lifecycle, study_lifecycle.c.study_pk == studies.c.id)
                )
                .where(studies.c.id > after_pk)
                .order_by(studies.c.id)
                .limit(page)
            ).all()
            if not rows:
                return
            classes = _classes(conn, [r.id for r in rows]) if by_class else {}
            latest = _latest_studies(conn, rows) if by_patient else {}
        due: list[Candidate] = []
        for row in rows:
            facts = StudyFacts(
                tenant=row.partition,
                modalities=frozenset(filter(None, (row.modalities or "").split("\\"))),
                sop_classes=frozenset(classes.get(row.id, ())),
                study_date=_da(row.study_date),
                last_study=_da(latest.get((row.partition, row.patient_id))),
                last_access=_ms(row.last_read_at),
                stored=_ms(row.created_at) or today,
                birth_date=_da(row.patient_birth_date),
            )
            found = due_date(rules, facts)
            if found is not None and found[0] <= today:
                due.append(Candidate(row.id, row.partition, row.study_uid, found[0], found[1].name))
        after_pk = rows[-1].id
        yield after_pk, len(rows), due


def _classes(conn: Any, pks: list[int]) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for study_pk, sop_class in conn.execute(
        select(series.c.study_pk, instances.c.sop_class_uid)
        .distinct()
        .select_from(instances.join(series, instances.c.series_pk == series.c.id))
        .where(series.c.study_pk.in_(pks))
    ):
        found.setdefault(study_pk, set()).add(sop_class)
    return found


def _latest_studies(conn: Any, rows: Sequence[Any]) -> dict[tuple[str, str], str]:
    """The latest Study Date of each patient of the page, over all their studies."""
    patients = {(r.partition, r.patient_id) for r in rows if r.patient_id}
    if not patients:
        return {}
    return {
        (partition, patient): latest
        for partition, patient, latest in conn.execute(
            select(studies.c.partition, studies.c.patient_id, func.max(studies.c.study_date))
            .where(tuple_(studies.c.partition, studies.c.patient_id).in_(sorted(patients)))
            .group_by(studies.c.partition, studies.c.patient_id)
        )
    }


def _da(text: str | None) -> date | None:
    """A DA value (YYYYMMDD); None when absent or not a date (the rule then counts from
    another date, or keeps the study)."""
    if not text or len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _ms(value: int | None) -> date | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, UTC).date()
