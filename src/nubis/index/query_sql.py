"""Run a :class:`nubis.model.query.Query` against the index with SQLAlchemy Core.

One query is one SQL statement: the entity table is joined to its parents, every matching key
becomes a WHERE clause over an indexed column (or an ``IN`` sub-select for Modalities in Study and
Request Attributes Sequence items), paging is ``ORDER BY`` primary key with ``LIMIT``/``OFFSET``
(a study query of the web face may be ordered by an indexed column first, ``Query.order``),
and the Request Attributes Sequence items are folded in by a correlated aggregate, so there is no
per-row query. Results are DICOM JSON objects (PS3.18 F.2) without Retrieve URL, which only the
HTTP layer can build.

Matching follows PS3.4 C.2.2.2:

* single value: equality, case-sensitive; PN compares the upper-cased ``*_folded`` columns, and a
  name given without ``=`` also matches the alphabetic group of a stored multi-group name;
* list of UIDs: ``IN``; Modalities in Study: any series of the study has one of the modalities;
* wildcard: ``*`` and ``?`` become ``GLOB`` on SQLite (whose ``LIKE`` ignores ASCII case, which
  C.2.2.2.4 forbids outside PN) and ``LIKE`` elsewhere, with ``%``, ``_`` and the escape character
  of the data escaped so they match literally;
* range (DA, TM): inclusive string comparison on the fixed-width values; an open lower bound
  does not match empty values; with ``Query.combine_datetime`` a date range and its time range
  form one date-time range;
* fuzzy PN (PS3.18 8.3.4.5): the value is split into words at ``^``, ``=``, space, comma and
  hyphen; each word must begin some word of the stored name, ignoring case. ``jo do`` finds
  ``Doe^John`` and ``Smith-Doe^Jo``; wildcards inside a word still apply.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from pydicom.datadict import dictionary_has_tag, dictionary_VR, tag_for_keyword
from sqlalchemy.sql.elements import ColumnElement

from nubis.index.schema import (
    grants,
    instances,
    quarantined_studies,
    research_studies,
    series,
    series_requests,
    studies,
    study_overlays,
)
from nubis.model.query import (
    Level,
    Match,
    MatchKind,
    Query,
    fold_person_name,
    tag_hex,
)

__all__ = ["Page", "granted_to", "scope_and_matches", "search", "search_page"]


def _t(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - guards a typo in the tables below
        raise KeyError(keyword)
    return tag


# Item separators for the aggregated Request Attributes Sequence: C0 controls never occur in SH
# values (PS3.5 6.2), so they cannot collide with data.
_FIELD_SEP = "\x1f"
_ITEM_SEP = "\x1e"

_SPS_ID = _t("ScheduledProcedureStepID")
_RP_ID = _t("RequestedProcedureID")
_REQUEST_ATTRIBUTES = _t("RequestAttributesSequence")


@dataclass(frozen=True)
class _Source:
    """Where the value of a returned attribute comes from.

    ``kind`` says how to turn the column value into DICOM JSON: ``str`` (backslash-separated
    values), ``text`` (single-valued text VRs, never split), ``pn``, ``int``, ``const`` (a fixed
    value) or ``requests`` (the aggregated Request Attributes Sequence).
    """

    tag: int
    vr: str
    level: Level
    kind: str
    column: Any = None
    const: str | None = None


def _src(keyword: str, level: Level, kind: str, column: Any = None, const: str | None = None):
    tag = _t(keyword)
    return _Source(tag, str(dictionary_VR(tag)), level, kind, column, const)


def _requests_aggregate() -> Any:
    item = (
        sa.func.coalesce(series_requests.c.scheduled_procedure_step_id, "")
        + _FIELD_SEP
        + sa.func.coalesce(series_requests.c.requested_procedure_id, "")
    )
    return (
        sa.select(sa.func.aggregate_strings(item, _ITEM_SEP))
        .where(series_requests.c.series_pk == series.c.id)
        .scalar_subquery()
    )


_ST, _SE, _IN = Level.STUDY, Level.SERIES, Level.INSTANCE
# Attributes held in columns, per level. Where a tag has a source at several levels (Timezone
# Offset From UTC, Instance Availability), the deepest one not below the query level wins.
_SOURCES: tuple[_Source, ...] = (
    _src("StudyDate", _ST, "str", studies.c.study_date),
    _src("StudyTime", _ST, "str", studies.c.study_time),
    _src("AccessionNumber", _ST, "str", studies.c.accession_number),
    _src("InstanceAvailability", _ST, "const", const="ONLINE"),
    _src("ModalitiesInStudy", _ST, "str", studies.c.modalities),
    _src("ReferringPhysicianName", _ST, "pn", studies.c.referring_physician_name),
    _src("TimezoneOffsetFromUTC", _ST, "str", studies.c.timezone_offset),
    _src("StudyDescription", _ST, "str", studies.c.study_description),
    _src("PatientName", _ST, "pn", studies.c.patient_name),
    _src("PatientID", _ST, "str", studies.c.patient_id),
    _src("PatientBirthDate", _ST, "str", studies.c.patient_birth_date),
    _src("PatientSex", _ST, "str", studies.c.patient_sex),
    _src("StudyInstanceUID", _ST, "str", studies.c.study_uid),
    _src("StudyID", _ST, "str", studies.c.study_id),
    _src("NumberOfStudyRelatedSeries", _ST, "int", studies.c.num_series),
    _src("NumberOfStudyRelatedInstances", _ST, "int", studies.c.num_instances),
    _src("Modality", _SE, "str", series.c.modality),
    _src("TimezoneOffsetFromUTC", _SE, "str", series.c.timezone_offset),
    _src("SeriesDescription", _SE, "str", series.c.series_description),
    _src("SeriesInstanceUID", _SE, "str", series.c.series_uid),
    _src("SeriesNumber", _SE, "int", series.c.series_number),
    _src("NumberOfSeriesRelatedInstances", _SE, "int", series.c.num_instances),
    _src("PerformedProcedureStepStartDate", _SE, "str", series.c.performed_date),
    _src("PerformedProcedureStepStartTime", _SE, "str", series.c.performed_time),
    _src("RequestAttributesSequence", _SE, "requests", _requests_aggregate()),
    _src("SOPClassUID", _IN, "str", instances.c.sop_class_uid),
    _src("SOPInstanceUID", _IN, "str", instances.c.sop_instance_uid),
    _src("InstanceNumber", _IN, "int", instances.c.instance_number),
    _src("Rows", _IN, "int", instances.c.rows),
    _src("Columns", _IN, "int", instances.c.columns),
    _src("BitsAllocated", _IN, "int", instances.c.bits_allocated),
    _src("NumberOfFrames", _IN, "int", instances.c.number_of_frames),
)


def _sources_for(level: Level) -> dict[int, _Source]:
    found: dict[int, _Source] = {}
    for source in sorted(_SOURCES, key=lambda s: s.level.depth):
        if source.level.depth <= level.depth:
            found[source.tag] = source
    return found


_SOURCES_AT = {level: _sources_for(level) for level in Level}

# The column each matching key compares (PN: the folded column), see MATCHING_KEYS.
_MATCH_COLUMNS: dict[tuple[int, ...], Any] = {
    (_t("StudyDate"),): studies.c.study_date,
    (_t("StudyTime"),): studies.c.study_time,
    (_t("AccessionNumber"),): studies.c.accession_number,
    (_t("ModalitiesInStudy"),): None,  # matched through the study's series, see _condition
    (_t("ReferringPhysicianName"),): studies.c.referring_physician_name_folded,
    (_t("PatientName"),): studies.c.patient_name_folded,
    (_t("PatientID"),): studies.c.patient_id,
    (_t("PatientBirthDate"),): studies.c.patient_birth_date,
    (_t("PatientSex"),): studies.c.patient_sex,
    (_t("StudyInstanceUID"),): studies.c.study_uid,
    (_t("StudyID"),): studies.c.study_id,
    (_t("StudyDescription"),): studies.c.study_description,
    (_t("Modality"),): series.c.modality,
    (_t("SeriesInstanceUID"),): series.c.series_uid,
    (_t("SeriesNumber"),): series.c.series_number,
    (_t("SeriesDescription"),): series.c.series_description,
    (_t("PerformedProcedureStepStartDate"),): series.c.performed_date,
    (_t("PerformedProcedureStepStartTime"),): series.c.performed_time,
    (_REQUEST_ATTRIBUTES, _SPS_ID): series_requests.c.scheduled_procedure_step_id,
    (_REQUEST_ATTRIBUTES, _RP_ID): series_requests.c.requested_procedure_id,
    (_t("SOPClassUID"),): instances.c.sop_class_uid,
    (_t("SOPInstanceUID"),): instances.c.sop_instance_uid,
    (_t("InstanceNumber"),): instances.c.instance_number,
}
_PN_PATHS = frozenset({(_t("PatientName"),), (_t("ReferringPhysicianName"),)})
_MODALITIES_PATH = (_t("ModalitiesInStudy"),)
# Date key -> its time key, for combined date-time range matching (PS3.4 C.2.2.2.5).
_DATETIME_PAIRS = {
    (_t("StudyDate"),): (_t("StudyTime"),),
    (_t("PerformedProcedureStepStartDate"),): (_t("PerformedProcedureStepStartTime"),),
}
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})


# --- matching -----------------------------------------------------------------------------------

_Wild = Callable[[Any, str], ColumnElement[bool]]


def _like_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as SQL LIKE with ``\\`` as escape (PS3.4 C.2.2.2.4)."""
    out = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "\\%_":
            out.append("\\" + ch)  # literal in the data, not a LIKE wildcard
        else:
            out.append(ch)
    return "".join(out)


def _glob_pattern(pattern: str) -> str:
    """A DICOM wildcard pattern as SQLite GLOB, whose ``*``/``?`` already mean the same."""
    # Only "[" opens a character class; "[[]" is the class holding a literal "[".
    return pattern.replace("[", "[[]")


def _wildcard_for(dialect_name: str) -> _Wild:
    if dialect_name == "sqlite":
        return lambda col, pattern: col.op("GLOB", is_comparison=True)(_glob_pattern(pattern))
    return lambda col, pattern: col.like(_like_pattern(pattern), escape="\\")


def _fuzzy(col: Any, value: str, wild: _Wild) -> ColumnElement[bool] | None:
    words = [w for w in re.split(r"[\^= ,\-]+", value.upper()) if w]
    if not words:
        return None
    clauses = []
    for word in words:
        # The word starts the name or follows a separator of the stored name.
        starts = [word + "*"] + [f"*{sep}{word}*" for sep in "^= ,-"]
        clauses.append(sa.or_(*(wild(col, p) for p in starts)))
    return sa.and_(*clauses)


def _value_condition(
    m: Match, col: Any, *, pn: bool, fuzzy: bool, wild: _Wild, binary_order: bool = False
) -> ColumnElement[bool] | None:
    """The WHERE clause of ``m`` on ``col``; None for universal matching."""
    if m.kind is MatchKind.UNIVERSAL:
        return None
    if pn and fuzzy and m.kind in (MatchKind.SINGLE, MatchKind.WILDCARD):
        return _fuzzy(col, str(m.values[0]), wild)
    if m.kind is MatchKind.SINGLE:
        value = m.values[0]
        if not pn:
            return col == value
        folded = fold_person_name(str(value))
        if "=" in folded:
            return col == folded
        # A name without component groups is the alphabetic group of a multi-group name too.
        either = sa.or_(col == folded, wild(col, folded + "=*"))
        if not binary_order:
            return either
        # Both alternatives sort in [folded, folded + ">") because ">" follows "="; with
        # SQLite's binary collation this range lets the name index find them, which the OR alone
        # does not.
        return sa.and_(col >= folded, col < folded + ">", either)
    if m.kind is MatchKind.LIST:
        return col.in_(m.values)
    if m.kind is MatchKind.WILDCARD:
        pattern = str(m.values[0])
        return wild(col, pattern.upper() if pn else pattern)
    # RANGE. An empty stored value sorts below every bound; an open lower bound must not let it
    # match, so "> ''" stands in for the missing bound (and still lets an index range-scan).
    return sa.and_(
        col >= m.low if m.low is not None else col > "",
        *([col <= m.high] if m.high is not None else []),
    )


def _combined_range(date_col: Any, time_col: Any, d: Match, t: Match) -> ColumnElement[bool]:
    """Date and time ranges as one date-time range (PS3.4 C.2.2.2.5, combined matching)."""
    clauses: list[ColumnElement[bool]] = []
    # The plain date bounds are implied by the combined ones; stating them lets an index on the
    # date column narrow the scan.
    if d.low is not None:
        clauses.append(date_col >= d.low)
        if t.low is not None:
            clauses.append(sa.or_(date_col > d.low, sa.and_(date_col == d.low, time_col >= t.low)))
    else:
        clauses.append(date_col > "")
    if d.high is not None:
        clauses.append(date_col <= d.high)
        if t.high is not None:
            clauses.append(
                sa.or_(date_col < d.high, sa.and_(date_col == d.high, time_col <= t.high))
            )
    return sa.and_(*clauses)


def _conditions(q: Query, dialect_name: str) -> list[ColumnElement[bool]]:
    wild = _wildcard_for(dialect_name)
    binary_order = dialect_name == "sqlite"
    by_path = {m.path: m for m in q.matches}
    combined: set[tuple[int, ...]] = set()
    out: list[ColumnElement[bool]] = []
    if q.combine_datetime:
        for date_path, time_path in _DATETIME_PAIRS.items():
            d, t = by_path.get(date_path), by_path.get(time_path)
            if d and t and d.kind is MatchKind.RANGE and t.kind is MatchKind.RANGE:
                combined |= {date_path, time_path}
                out.append(
                    _combined_range(_MATCH_COLUMNS[date_path], _MATCH_COLUMNS[time_path], d, t)
                )
    for m in q.matches:
        if m.path in combined:
            continue
        if m.path == _MODALITIES_PATH:
            # Matched against the series rather than the joined ``modalities`` text, so that a
            # wildcard cannot span two modalities; the alias keeps the sub-select from
            # correlating with the outer ``series`` of a series or instance query.
            ms = series.alias("ms")
            inner = _value_condition(m, ms.c.modality, pn=False, fuzzy=False, wild=wild)
            if inner is not None:
                out.append(studies.c.id.in_(sa.select(ms.c.study_pk).where(inner)))
            continue
        col = _MATCH_COLUMNS[m.path]
        cond = _value_condition(
            m, col, pn=m.path in _PN_PATHS, fuzzy=q.fuzzy, wild=wild, binary_order=binary_order
        )
        if cond is None:
            continue
        if m.path[0] == _REQUEST_ATTRIBUTES:
            cond = series.c.id.in_(sa.select(series_requests.c.series_pk).where(cond))
        out.append(cond)
    return out


# --- statement ----------------------------------------------------------------------------------


def _partition_is(col: Any, partition: str, *, unindexed: bool) -> ColumnElement[bool]:
    if unindexed:
        # Nothing selective to search by: walking the table in primary key order and stopping at
        # the page end beats SQLite's habit of picking a (partition, ...) index for
        # "partition = ?" and then sorting every row of the partition. Wrapping the NOT NULL
        # column keeps the meaning and takes the term out of index selection.
        return sa.func.coalesce(col, "") == partition
    return col == partition


def not_quarantined() -> ColumnElement[bool]:
    """Studies not held in quarantine (docs/security.md, "One study, one patient").

    NOT IN rather than NOT EXISTS: the set is small, PostgreSQL hashes it once and keeps the
    study list's index scan (an anti-join would sort the whole partition first)."""
    return studies.c.id.not_in(sa.select(quarantined_studies.c.study_pk))


def granted_to(grantee: str, level: Level) -> ColumnElement[bool]:
    """What is granted to ``grantee`` at ``level``: the scope of every grant-limited read
    (QIDO-RS and C-FIND at each level here, retrieval through ``Index.instances_of``).

    A grant names a patient or a study, in the study's own partition, and may narrow a study to
    one series (``grants.series_uid``). A study is seen when anything in it is granted; a series
    or an instance only when the grant covers its series (no series named: all of them). A
    correlated EXISTS rather than a join: a study granted twice (by patient and by study) is
    still one row, and paging by primary key stays exact.
    """
    conditions = [
        grants.c.subject == grantee,
        grants.c.tenant == studies.c.partition,
        sa.or_(
            grants.c.study_uid == studies.c.study_uid,
            grants.c.patient_id == studies.c.patient_id,
        ),
    ]
    if level is not Level.STUDY:
        conditions.append(
            sa.or_(grants.c.series_uid.is_(None), grants.c.series_uid == series.c.series_uid)
        )
    return sa.exists().where(*conditions)


def in_project(project_id: int) -> ColumnElement[bool]:
    """Studies of a research project's cohort: the scope of a researcher's reads, as grants
    are a referrer's (the project's tenant is the query's partition)."""
    return studies.c.study_uid.in_(
        sa.select(research_studies.c.study_uid).where(research_studies.c.project_id == project_id)
    )


def _granted_studies(grantee: str, partition: str) -> ColumnElement[bool]:
    """Studies of ``partition`` granted to ``grantee``, for a search.

    The grants list Study Instance UIDs and Patient IDs, which the study indexes find: the
    granted studies are read through them (a UNION of the two, so a study granted twice is one
    row) instead of every study of the tenant being tested against the grants, which
    :func:`granted_to` does (right for one study; seconds at 100,000 studies). Both engines
    plan the UNION as index lookups; an OR of the two ``IN`` tests would scan the tenant on
    PostgreSQL.
    """
    mine = (grants.c.subject == grantee, grants.c.tenant == partition)
    by_study, by_patient = studies.alias("granted_by_study"), studies.alias("granted_by_patient")
    return studies.c.id.in_(
        sa.union(
            sa.select(by_study.c.id).where(
                by_study.c.partition == partition,
                by_study.c.study_uid.in_(
                    sa.select(grants.c.study_uid).where(*mine, grants.c.study_uid.is_not(None))
                ),
            ),
            sa.select(by_patient.c.id).where(
                by_patient.c.partition == partition,
                by_patient.c.patient_id.in_(
                    sa.select(grants.c.patient_id).where(*mine, grants.c.patient_id.is_not(None))
                ),
            ),
        )
    )


def _base(q: Query, *, unindexed_partition: bool) -> tuple[Any, Any, list[ColumnElement[bool]]]:
    """FROM clause, primary key and the partition/scope filters of the query level."""
    where = [_partition_is(studies.c.partition, q.partition, unindexed=unindexed_partition)]
    if q.hide_quarantined:
        where.append(not_quarantined())
    if q.grantee is not None:
        where.append(_granted_studies(q.grantee, q.partition))
        if q.level is not Level.STUDY:
            # Which series of those studies: a grant may name some series only (share links).
            where.append(granted_to(q.grantee, q.level))
    if q.project_id is not None:
        where.append(in_project(q.project_id))
    if q.study_uid is not None:
        where.append(studies.c.study_uid == q.study_uid)
    if q.series_uid is not None:
        where.append(series.c.series_uid == q.series_uid)
    if q.level is Level.STUDY:
        return studies, studies.c.id, where
    from_ = series.join(studies, series.c.study_pk == studies.c.id)
    if q.level is Level.SERIES:
        return from_, series.c.id, where
    from_ = instances.join(from_, instances.c.series_pk == series.c.id)
    where.append(_partition_is(instances.c.partition, q.partition, unindexed=unindexed_partition))
    return from_, instances.c.id, where


def scope_and_matches(q: Query, dialect_name: str) -> list[ColumnElement[bool]]:
    """Every WHERE term of ``q`` (scope and matching keys) without its statement: for readers
    that select something else than QIDO-RS's answer from the same rows (analytics). Unless a
    key narrows the rows, the partition is kept out of index selection as for QIDO-RS
    (:func:`_partition_is`): a walk in primary key order then reads the instances in order
    rather than every study of the partition sorted anew for each page."""
    _from, _pk, where = _base(q, unindexed_partition=not _narrowed(q))
    return [*where, *_conditions(q, dialect_name)]


# Matching keys an index finds rows by (schema.py): an equality or range on them narrows the scan.
_INDEXED_PATHS = frozenset(
    {
        (_t("PatientID"),),
        (_t("PatientName"),),
        (_t("StudyDate"),),
        (_t("AccessionNumber"),),
        (_t("StudyInstanceUID"),),
        (_t("SeriesInstanceUID"),),
        (_t("SOPInstanceUID"),),
    }
)


def _narrowed(q: Query) -> bool:
    """Whether the query names something an index can find rows by."""
    if q.study_uid is not None or q.series_uid is not None or q.grantee is not None:
        return True
    if q.project_id is not None:
        return True
    for m in q.matches:
        if m.path not in _INDEXED_PATHS or m.kind is MatchKind.UNIVERSAL:
            continue
        if m.path in _PN_PATHS and q.fuzzy:
            continue
        if m.kind is MatchKind.WILDCARD and str(m.values[0])[:1] in ("*", "?"):
            continue
        return True
    return False


# The column a study query is ordered by (Order.tag): each leads an index after the partition.
_ORDER_COLUMNS: dict[int, Any] = {
    _t("StudyDate"): studies.c.study_date,
    _t("PatientName"): studies.c.patient_name_folded,
    _t("PatientID"): studies.c.patient_id,
    _t("AccessionNumber"): studies.c.accession_number,
}


def _order_by(q: Query, pk: Any) -> list[Any]:
    """ORDER BY terms: the primary key, after the ordering column if any; both descending when
    asked, so that an index on (partition, column), which ends with the primary key, serves
    the order read forwards or backwards."""
    if q.order is None:
        return [pk]
    columns = [pk] if q.order.tag is None else [_ORDER_COLUMNS[q.order.tag], pk]
    return [c.desc() for c in columns] if q.order.descending else columns


def _json_columns(level: Level) -> list[Any]:
    """The stored DICOM JSON a level's further attributes come from, weakest first."""
    if level is Level.STUDY:
        return [studies.c.attrs]
    if level is Level.SERIES:
        return [studies.c.attrs, series.c.attrs]
    # The instance metadata holds the patient, study and series attributes as well; a
    # corrected study's overlay (nubis.dicom.overlay) replaces some of them.
    return [instances.c.metadata_json, study_overlays.c.attrs]


@dataclass(frozen=True)
class _Plan:
    statement: Any
    # Column-backed attributes in tag order, as (JSON key, converter), selected after the key.
    fields: tuple[tuple[str, Callable[[Any], dict[str, Any]]], ...]
    json_count: int  # stored JSON columns selected after them
    wanted: frozenset[int] | None  # attributes taken from JSON; None: all of them
    missing: frozenset[int]  # requested, neither column nor JSON: returned empty


def _plan(q: Query, dialect_name: str, limit: int) -> _Plan:
    available = _SOURCES_AT[q.level]
    matched = {m.tag for m in q.matches}
    if q.include == "all":
        column_tags = set(available)
        wanted: frozenset[int] | None = None
        needs_json = True
    else:
        requested = set(q.include) | matched
        column_tags = requested & set(available)
        wanted = frozenset(requested - column_tags)
        needs_json = bool(wanted)
    sources = tuple(available[t] for t in sorted(column_tags))
    json_cols = _json_columns(q.level) if needs_json else []

    # A query ordered by a column reads its page along the (partition, column) index, so the
    # partition must stay a plain equality that the index can serve.
    unindexed = (q.order is None or q.order.tag is None) and not _narrowed(q)
    from_, pk, where = _base(q, unindexed_partition=unindexed)
    where.extend(_conditions(q, dialect_name))
    order = _order_by(q, pk)
    # Two steps: the inner select finds the page's keys, which an index on the matched column
    # usually covers, so only integers are sorted for the stable order; the outer select then
    # reads the wide rows of that page alone by primary key.
    page = (
        sa.select(pk)
        .select_from(from_)
        .where(*where)
        .order_by(*order)
        .limit(limit)
        .offset(q.offset)
        .correlate(None)
    )
    # A constant attribute selects a NULL placeholder, so that row positions follow tag order.
    placeholders = (sa.null().label(f"const_{i}") for i in itertools.count())
    columns = [pk, *(s.column if s.column is not None else next(placeholders) for s in sources)]
    columns += json_cols
    wide_from = from_
    if json_cols and q.level is Level.INSTANCE:
        wide_from = from_.outerjoin(study_overlays, study_overlays.c.study_pk == studies.c.id)
    stmt = sa.select(*columns).select_from(wide_from).where(pk.in_(page)).order_by(*order)
    fields = tuple((tag_hex(src.tag), _converter(src)) for src in sources)
    return _Plan(stmt, fields, len(json_cols), wanted, frozenset(wanted or ()))


# --- DICOM JSON ---------------------------------------------------------------------------------


def _pn_value(text: str) -> dict[str, str]:
    groups = text.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: g for name, g in zip(names, groups, strict=False) if g}


def _requests_items(text: str) -> list[dict[str, Any]]:
    items = []
    for raw in text.split(_ITEM_SEP):
        sps, _, rp = raw.partition(_FIELD_SEP)
        items.append(
            {
                tag_hex(_SPS_ID): {"vr": "SH", "Value": [sps]} if sps else {"vr": "SH"},
                tag_hex(_RP_ID): {"vr": "SH", "Value": [rp]} if rp else {"vr": "SH"},
            }
        )
    return items


def _converter(source: _Source) -> Callable[[Any], dict[str, Any]]:
    """A function turning the column value of ``source`` into its DICOM JSON element."""
    vr = source.vr
    if source.kind == "const":
        const = source.const
        return lambda _value: {"vr": vr, "Value": [const]}
    if source.kind == "int":
        convert: Callable[[Any], list[Any]] = lambda v: [int(v)]  # noqa: E731
    elif source.kind == "pn":
        convert = lambda v: [_pn_value(n) for n in str(v).split("\\")]  # noqa: E731
    elif source.kind == "requests":
        convert = lambda v: _requests_items(str(v))  # noqa: E731
    elif vr in _TEXT_VRS:
        convert = lambda v: [str(v)]  # noqa: E731
    else:
        convert = lambda v: str(v).split("\\")  # noqa: E731

    def element(value: Any) -> dict[str, Any]:
        if value is None or value == "":
            return {"vr": vr}
        return {"vr": vr, "Value": convert(value)}

    return element


def _without_bulk(element: dict[str, Any]) -> dict[str, Any] | None:
    """``element`` without bulk data references, which are not query results (PS3.18 10.6.3)."""
    if "BulkDataURI" in element:
        return None
    if element.get("vr") == "SQ" and isinstance(element.get("Value"), list):
        items = []
        for item in element["Value"]:
            items.append({k: e for k, sub in item.items() if (e := _without_bulk(sub)) is not None})
        return {**element, "Value": items}
    return element


def _merge_json(
    result: dict[str, Any], text: str | None, wanted: frozenset[int] | None, withheld: set[str]
) -> None:
    """Add the ``wanted`` elements of stored DICOM JSON ``text`` to ``result``; the keys of
    bulk data elements, left out, go to ``withheld``."""
    if not text:
        return
    data = json.loads(text)
    if wanted is None:
        keys: Iterable[str] = data.keys()
    else:
        keys = [k for k in (tag_hex(t) for t in wanted) if k in data]
    for key in keys:
        element = _without_bulk(data[key])
        if element is not None:
            result[key] = element
        else:
            withheld.add(key)


def _to_json(plan: _Plan, row: Any) -> dict[str, Any]:
    values = row[1:]
    if not plan.json_count and not plan.missing:
        # The common case: columns only, already in tag order.
        return {k: convert(v) for (k, convert), v in zip(plan.fields, values, strict=True)}
    result: dict[str, Any] = {}
    withheld: set[str] = set()
    for text in values[len(plan.fields) :]:
        _merge_json(result, text, plan.wanted, withheld)
    # Columns win over the stored JSON: they are what matching compares, and the computed
    # attributes (counts, Modalities in Study) are only right there.
    for (key, convert), value in zip(plan.fields, values, strict=False):
        result[key] = convert(value)
    # A requested attribute the entity lacks is returned empty, as C-FIND does with return keys,
    # when its VR is certain: one the dictionary leaves open ("OB or OW", "US or SS") only the
    # object could tell, and a bulk data element the entity has is not empty. Both are left out.
    for tag in plan.missing:
        key = tag_hex(tag)
        if key in result or key in withheld or not dictionary_has_tag(tag):
            continue
        vr = str(dictionary_VR(tag))
        if " or " not in vr:
            result[key] = {"vr": vr}
    return dict(sorted(result.items()))


# --- API ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of results and whether the server's cap cut off further matches."""

    items: list[dict[str, Any]]
    more: bool


def search_page(conn: sa.Connection, q: Query) -> Page:
    """Run ``q`` and tell whether more results exist beyond a server-capped page.

    When ``q.limit_capped`` (the client gave no limit, or a larger one than allowed) one extra row
    is fetched to learn whether results were cut off, so the HTTP layer can send PS3.18 8.3.4.4's
    "additional results can be requested" warning. The work is one SQL statement.
    """
    probe = 1 if q.limit_capped else 0
    plan = _plan(q, conn.dialect.name, q.limit + probe)
    rows = conn.execute(plan.statement).all()
    more = len(rows) > q.limit
    return Page([_to_json(plan, row) for row in rows[: q.limit]], more)


def search(conn: sa.Connection, q: Query) -> list[dict[str, Any]]:
    """Run ``q`` and return one DICOM JSON object (PS3.18 F.2) per matching entity.

    Each object holds the attributes in ``q.include`` (or everything the index holds for the
    entity when it is ``"all"``) and every matching key; Retrieve URL is left to the HTTP layer.
    Entities of other partitions are never seen, and the order is stable (primary key), so
    walking the pages with ``offset`` returns each entity once.
    """
    plan = _plan(q, conn.dialect.name, q.limit)
    return [_to_json(plan, row) for row in conn.execute(plan.statement)]
