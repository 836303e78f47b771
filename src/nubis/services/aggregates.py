"""Federated statistics at one site: an aggregate question answered as suppressed counts.

The caller asks one of the declared kinds (nubis.model.aggregates.KINDS) with an optional
QIDO-RS style filter (``Modality=CT&StudyDate=20200101-20231231``, instance level keys). The
Guard authorizes AGGREGATE (admins and researchers: an answer with small cells suppressed names
and identifies no one, docs/analytics.md says why), the caller's scope goes into the SQL as it
does for QIDO-RS, and the question is recorded as a Query (PS3.15 A.5.3.10) that commits before
the answer is handed out. Only dimension values and counts leave: no UID, no patient value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

import sqlalchemy as sa
from pydicom.datadict import keyword_for_tag, tag_for_keyword

from nubis.errors import BadRequest
from nubis.index import analytics_sql
from nubis.index.database import Index
from nubis.index.schema import INSTANCES_LOCATED, instances, series, studies
from nubis.model.aggregates import (
    KINDS,
    KVP_EDGES,
    SLICE_THICKNESS_EDGES,
    UNKNOWN,
    AggregateKind,
    bin_label,
    suppress,
)
from nubis.model.query import Level, Query, parse_qido
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard

__all__ = ["FILTER_KEYWORDS", "AggregateService"]

# QIDO-RS parameters that shape a page of results, meaningless for a count.
_NOT_FILTERS = frozenset({"limit", "offset", "includefield", "fuzzymatching", "orderby"})
# The matching keys a cohort may be chosen by: none names a person or an object. A filter on
# Patient ID, a name, an accession number or a UID would turn "how many" into "does this
# patient have", which suppression does not hide.
FILTER_KEYWORDS = (
    "Modality",
    "ModalitiesInStudy",
    "StudyDate",
    "PatientSex",
    "SOPClassUID",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "NumberOfSeriesRelatedInstances",
)
_FILTER_TAGS = frozenset(tag_for_keyword(k) for k in FILTER_KEYWORDS)


class AggregateService:
    def __init__(self, index: Index, guard: Guard, *, min_cell: int) -> None:
        if min_cell < 1:
            raise ValueError("the smallest reported cell is at least 1")
        self.index = index
        self.guard = guard
        self.min_cell = min_cell

    def answer(
        self, who: Principal, kind_name: str, params: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        """The suppressed counts of ``kind_name`` over the instances ``params`` match in the
        caller's scope. BadRequest names an unknown kind or a bad filter; Forbidden (recorded)
        for roles that may not ask."""
        # Authorized before the question is looked at: a refusal says nothing else.
        decision = self.guard.authorize(who, Action.AGGREGATE, "aggregate statistics")
        assert decision.scope is not None
        kind = KINDS.get(kind_name)
        if kind is None:
            raise BadRequest(f"unknown aggregate kind: give kind once, one of {', '.join(KINDS)}")
        for name, _value in params:
            if name.lower() in _NOT_FILTERS:
                raise BadRequest(f"{name} does not apply to an aggregate (counts have no pages)")
        query = parse_qido(Level.INSTANCE, params, max_limit=1)
        for match in query.matches:
            if len(match.path) != 1 or match.path[0] not in _FILTER_TAGS:
                name = keyword_for_tag(match.path[0]) or f"{match.path[0]:08X}"
                raise BadRequest(
                    f"{name} cannot choose the cohort of an aggregate, which must not single "
                    f"anyone out; filter by {', '.join(FILTER_KEYWORDS)}"
                )
        scope = decision.scope
        scoped = replace(
            query,
            partition=scope.partition,
            grantee=scope.grantee,
            hide_quarantined=not scope.sees_quarantine,
        )
        text = urlencode([("kind", kind.name), *params])
        event = audit_events.query(who, f"aggregate?{text}", request_id=who.request_id)
        with self.guard.recording(event):
            counts = self._count(kind, scoped)
        return suppress(kind, counts, self.min_cell)

    def _count(self, kind: AggregateKind, query: Query) -> dict[tuple[str, ...], int]:
        where = analytics_sql.matching(query, self.index.dialect)
        if kind.name == "studies_by_modality_year":
            keys: list[Any] = [series.c.modality, sa.func.substr(studies.c.study_date, 1, 4)]
            counted: Any = sa.func.count(sa.distinct(studies.c.id))
        elif kind.name == "instances_by_body_part":
            keys, counted = [analytics_sql.BODY_PART], sa.func.count(instances.c.id)
        elif kind.name == "series_by_manufacturer":
            keys = [analytics_sql.MANUFACTURER, analytics_sql.MODEL]
            counted = sa.func.count(sa.distinct(series.c.id))
        elif kind.name == "slice_thickness_histogram":
            keys, counted = [analytics_sql.SLICE_THICKNESS], sa.func.count(instances.c.id)
        else:
            keys, counted = [analytics_sql.KVP], sa.func.count(instances.c.id)
        stmt = sa.select(*keys, counted).select_from(INSTANCES_LOCATED).where(*where)
        with self.index.reading() as conn:
            rows = conn.execute(stmt.group_by(*keys)).all()
        counts: dict[tuple[str, ...], int] = {}
        for *values, count in rows:
            key = self._cell(kind, values)
            counts[key] = counts.get(key, 0) + int(count)
        return counts

    @staticmethod
    def _cell(kind: AggregateKind, values: list[Any]) -> tuple[str, ...]:
        if kind.name == "slice_thickness_histogram":
            return (bin_label(values[0], SLICE_THICKNESS_EDGES),)
        if kind.name == "kvp_histogram":
            return (bin_label(values[0], KVP_EDGES),)
        # Modality and body part are code strings (CS): one spelling per value across sites.
        coded = kind.name != "series_by_manufacturer"
        texts = ("" if v is None else str(v).strip() for v in values)
        return tuple((t.upper() if coded else t) or UNKNOWN for t in texts)
