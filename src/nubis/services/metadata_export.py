"""Analytics export: the index's study, series and instance rows as Parquet tables (pyarrow).

For DuckDB, pandas or Spark to filter cohorts in seconds (docs/analytics.md): one file per
level, ``studies.parquet``, ``series.parquet``, ``instances.parquet``, and ``manifest.json``
(counts, variant, profile). Rows are read a page at a time by ``Index.walk`` and written as one
row group per page, so memory stays bounded however large the archive.

Two variants, both authorized as EXPORT and recorded as an Export (PS3.15 A.5.3.6) before a row
is written (nothing leaves unrecorded):

- identified, for admins: the index's values as stored;
- de-identified, given a :class:`DeidTarget` (a research project's profile, key and studies):
  every column passes through the rule the engine applies to its attribute
  (nubis.deid.tabular): the pseudonymous Patient ID, remapped UIDs and dates shifted by the
  patient's shift, exactly as the project's on-the-fly views and exports give them; columns the
  profile removes are absent, and objects the profile excludes (burned-in text) are left out.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from nubis.deid.profile import Profile
from nubis.deid.pseudonyms import Pseudonyms
from nubis.deid.tabular import ColumnRule, column_rules, excluded
from nubis.deid.values import shift_date
from nubis.index import analytics_sql
from nubis.index.database import Index
from nubis.index.schema import INSTANCES_LOCATED, instance_tiers, instances, series, studies
from nubis.model.query import Level, parse_qido
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard

__all__ = ["DeidTarget", "ExportSummary", "MetadataExport"]

_PAGE = 10_000


@dataclass(frozen=True)
class DeidTarget:
    """What a de-identified export is for: a research project's profile and key, and the
    studies it holds (None: every study the filter matches)."""

    profile: Profile
    project_key: bytes
    project: str = ""
    study_uids: frozenset[str] | None = None


@dataclass(frozen=True)
class _Col:
    name: str
    expr: Any
    kind: str  # str, int, float, date
    keyword: str | None = None  # the DICOM attribute, whose de-identification rule applies


@dataclass
class ExportSummary:
    folder: Path
    variant: str
    rows: dict[str, int] = field(default_factory=dict)
    excluded_instances: int = 0
    bytes: int = 0
    dropped_columns: list[str] = field(default_factory=list)


_TIER = "tier"

_STUDY_COLUMNS = (
    _Col("study_uid", studies.c.study_uid, "str", "StudyInstanceUID"),
    _Col("patient_id", studies.c.patient_id, "str", "PatientID"),
    _Col("patient_name", studies.c.patient_name, "str", "PatientName"),
    _Col("patient_birth_date", studies.c.patient_birth_date, "date", "PatientBirthDate"),
    _Col("patient_sex", studies.c.patient_sex, "str", "PatientSex"),
    _Col("study_date", studies.c.study_date, "date", "StudyDate"),
    _Col("accession_number", studies.c.accession_number, "str", "AccessionNumber"),
    _Col("study_description", studies.c.study_description, "str", "StudyDescription"),
    _Col("modalities", studies.c.modalities, "str"),
    _Col("num_series", studies.c.num_series, "int"),
    _Col("num_instances", studies.c.num_instances, "int"),
)
_SERIES_COLUMNS = (
    _Col("series_uid", series.c.series_uid, "str", "SeriesInstanceUID"),
    _Col("study_uid", studies.c.study_uid, "str", "StudyInstanceUID"),
    _Col("patient_id", studies.c.patient_id, "str", "PatientID"),
    _Col("modality", series.c.modality, "str", "Modality"),
    _Col("series_number", series.c.series_number, "int", "SeriesNumber"),
    _Col("series_description", series.c.series_description, "str", "SeriesDescription"),
    _Col("series_date", series.c.performed_date, "date", "PerformedProcedureStepStartDate"),
    _Col("study_date", studies.c.study_date, "date", "StudyDate"),
    _Col("body_part_examined", analytics_sql.BODY_PART, "str", "BodyPartExamined"),
    _Col("manufacturer", analytics_sql.MANUFACTURER, "str", "Manufacturer"),
    _Col("manufacturer_model_name", analytics_sql.MODEL, "str", "ManufacturerModelName"),
    _Col("num_instances", series.c.num_instances, "int"),
)
_INSTANCE_COLUMNS = (
    _Col("sop_instance_uid", instances.c.sop_instance_uid, "str", "SOPInstanceUID"),
    _Col("series_uid", series.c.series_uid, "str", "SeriesInstanceUID"),
    _Col("study_uid", studies.c.study_uid, "str", "StudyInstanceUID"),
    _Col("patient_id", studies.c.patient_id, "str", "PatientID"),
    _Col("modality", series.c.modality, "str", "Modality"),
    _Col("study_date", studies.c.study_date, "date", "StudyDate"),
    _Col("sop_class_uid", instances.c.sop_class_uid, "str", "SOPClassUID"),
    _Col("transfer_syntax_uid", instances.c.transfer_syntax_uid, "str"),
    _Col("instance_number", instances.c.instance_number, "int", "InstanceNumber"),
    _Col("rows", instances.c.rows, "int", "Rows"),
    _Col("columns", instances.c.columns, "int", "Columns"),
    _Col("bits_allocated", instances.c.bits_allocated, "int", "BitsAllocated"),
    _Col("number_of_frames", instances.c.number_of_frames, "int", "NumberOfFrames"),
    _Col("slice_thickness", analytics_sql.SLICE_THICKNESS, "float", "SliceThickness"),
    _Col("kvp", analytics_sql.KVP, "float", "KVP"),
    _Col("size_bytes", instances.c.size, "int"),
    _Col(_TIER, instance_tiers.c.tier, "str"),
)
_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "date": pa.date32()}
# Read beside an instance's columns, to apply the profile's burned-in policy.
_BURNED_IN_INPUTS = (analytics_sql.BURNED_IN, analytics_sql.HAS_PIXELS)


class MetadataExport:
    def __init__(self, index: Index, guard: Guard, *, default_tier: str) -> None:
        self.index = index
        self.guard = guard
        self.default_tier = default_tier

    def parquet(
        self,
        who: Principal,
        folder: Path,
        *,
        params: Sequence[tuple[str, str]] = (),
        deid: DeidTarget | None = None,
    ) -> ExportSummary:
        """Write the tables of the instances ``params`` (a QIDO-RS style filter, instance
        level keys) match in ``who``'s scope into ``folder``: identified, or de-identified
        for ``deid``. Forbidden (recorded) without EXPORT; BadRequest for a bad filter."""
        decision = self.guard.authorize(who, Action.EXPORT, "analytics metadata export")
        assert decision.scope is not None
        query = parse_qido(Level.INSTANCE, params, max_limit=1)
        scoped = replace(
            query,
            partition=decision.scope.partition,
            grantee=decision.scope.grantee,
            hide_quarantined=not decision.scope.sees_quarantine,
        )
        variant = "identified" if deid is None else "de-identified"
        detail = "" if deid is None else f" for project {deid.project or '-'} ({deid.profile.name})"
        self.guard.record(
            audit_events.data_export(
                who,
                request_id=who.request_id,
                description=f"Parquet metadata export, {variant}{detail}, to {folder}"
                + (f", filter {sorted(params)}" if params else ""),
            )
        )
        folder.mkdir(parents=True, exist_ok=True)
        summary = ExportSummary(folder, variant)
        rows = _Rows(deid, self.default_tier)
        summary.dropped_columns = rows.dropped
        matches = analytics_sql.matching(scoped, self.index.dialect)
        if deid is not None and deid.study_uids is not None:
            matches.append(studies.c.study_uid.in_(sorted(deid.study_uids)))
        levels: list[tuple[str, Sequence[_Col], Any, Any, list[ColumnElement[bool]]]] = [
            ("studies", _STUDY_COLUMNS, studies.c.id, studies, [_any_instance(matches)]),
            (
                "series",
                _SERIES_COLUMNS,
                series.c.id,
                series.join(studies, series.c.study_pk == studies.c.id),
                [_any_instance(matches)],
            ),
            ("instances", _INSTANCE_COLUMNS, instances.c.id, INSTANCES_LOCATED, matches),
        ]
        for name, columns, key, from_, where in levels:
            summary.rows[name] = self._write_table(
                folder / f"{name}.parquet", columns, key, from_, where, rows, summary
            )
        summary.bytes = sum((folder / f"{name}.parquet").stat().st_size for name, *_ in levels)
        manifest = {
            "variant": variant,
            "rows": summary.rows,
            "excluded_instances": summary.excluded_instances,
            "dropped_columns": summary.dropped_columns,
            # The filter's values may name someone (a Patient ID): a de-identified export's
            # manifest gives the keys only.
            "filter": [list(p) for p in params] if deid is None else [n for n, _v in params],
            "profile": None
            if deid is None
            else {"name": deid.profile.name, "version": deid.profile.version},
            "project": None if deid is None else deid.project,
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return summary

    def _write_table(
        self,
        path: Path,
        columns: Sequence[_Col],
        key: Any,
        from_: Any,
        where: list[ColumnElement[bool]],
        rows: _Rows,
        summary: ExportSummary,
    ) -> int:
        kept = [c for c in columns if c.name not in rows.dropped]
        schema = pa.schema([(c.name, _ARROW[c.kind]) for c in kept])
        is_instances = path.stem == "instances"
        extra = _BURNED_IN_INPUTS if is_instances and rows.deid is not None else ()
        selected = [c.expr for c in columns] + [*extra]
        partial = path.with_suffix(".parquet.partial")
        written = 0
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            for page in self.index.walk(key, selected, select_from=from_, where=where, page=_PAGE):
                table, skipped = rows.batch(columns, kept, page, burned_in=bool(extra))
                summary.excluded_instances += skipped
                if table:
                    writer.write_table(pa.table(table, schema=schema))
                written += len(page) - skipped
        os.replace(partial, path)
        return written


def _any_instance(matches: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    """Studies or series (correlated with the outer statement) with an instance the filter
    matches: the study and series tables hold what the instance table holds."""
    return sa.exists(
        sa.select(sa.literal(1)).where(
            instances.c.series_pk == series.c.id, series.c.study_pk == studies.c.id, *matches
        )
    )


class _Rows:
    """Pages of index rows turned into Arrow columns, de-identified when a target is given."""

    def __init__(self, deid: DeidTarget | None, default_tier: str) -> None:
        self.deid = deid
        self.default_tier = default_tier
        self.rules: dict[str, ColumnRule] = {}
        self.dropped: list[str] = []
        self._exclusions: dict[tuple[str | None, str, str | None, bool], bool] = {}
        if deid is None:
            return
        keywords = {
            c.keyword for c in (*_STUDY_COLUMNS, *_SERIES_COLUMNS, *_INSTANCE_COLUMNS) if c.keyword
        }
        self.rules = column_rules(deid.profile, sorted(keywords))
        self.dropped = sorted(
            {
                c.name
                for c in (*_STUDY_COLUMNS, *_SERIES_COLUMNS, *_INSTANCE_COLUMNS)
                if c.keyword and self.rules[c.keyword] is ColumnRule.DROP
            }
        )
        pseudonyms = Pseudonyms(deid.project_key)
        low, high = deid.profile.shift_days
        self._pseudonym = lru_cache(maxsize=1 << 16)(pseudonyms.patient_id)
        self._shift = lru_cache(maxsize=1 << 16)(lambda pid: pseudonyms.date_shift(pid, low, high))
        self._uid = pseudonyms.uid
        self._pseudonyms = pseudonyms

    def batch(
        self, columns: Sequence[_Col], kept: Sequence[_Col], page: Sequence[Any], *, burned_in: bool
    ) -> tuple[dict[str, list[Any]], int]:
        """The Arrow columns of one page, and how many rows the profile excluded."""
        index = {c.name: i + 1 for i, c in enumerate(columns)}  # row[0] is the walk's key
        rows: Iterable[Any] = page
        skipped = 0
        if burned_in and self.deid is not None:
            modality_at, class_at = index["modality"], index["sop_class_uid"]
            profile = self.deid.profile
            keep = [
                r
                for r in page
                if not self._excluded(profile, r[modality_at], r[class_at], r[-2], bool(r[-1]))
            ]
            skipped = len(page) - len(keep)
            rows = keep
        rows = list(rows)
        if self.deid is not None:
            # Remapped UIDs are recomputed, not remembered: the map would grow with the archive.
            self._pseudonyms.uid_map.clear()
        patients = [r[index["patient_id"]] or "" for r in rows] if "patient_id" in index else []
        out: dict[str, list[Any]] = {}
        for col in kept:
            values = [r[index[col.name]] for r in rows]
            out[col.name] = self._column(col, values, patients)
        return (out if rows else {}), skipped

    def _excluded(
        self,
        profile: Profile,
        modality: str | None,
        sop_class_uid: str,
        burned_in_annotation: str | None,
        has_pixel_data: bool,
    ) -> bool:
        # A handful of combinations in a whole archive: decided once each.
        key = (modality, sop_class_uid, burned_in_annotation, has_pixel_data)
        found = self._exclusions.get(key)
        if found is None:
            found = self._exclusions[key] = excluded(
                profile,
                modality=modality,
                sop_class_uid=sop_class_uid,
                burned_in_annotation=burned_in_annotation,
                has_pixel_data=has_pixel_data,
            )
        return found

    def _column(self, col: _Col, values: list[Any], patients: list[str]) -> list[Any]:
        if col.name == _TIER:
            return [v or self.default_tier for v in values]
        rule = self.rules.get(col.keyword or "", ColumnRule.KEEP)
        if rule is ColumnRule.PSEUDONYM:
            return [self._pseudonym(p) for p in patients]
        if rule is ColumnRule.REMAP_UID:
            return [None if v is None else self._uid(v) for v in values]
        if rule is ColumnRule.SHIFT_DATE:
            values = [
                None if v is None else shift_date(v, self._shift(p))
                for v, p in zip(values, patients, strict=True)
            ]
        if col.kind == "date":
            return [_date(v) for v in values]
        if col.kind == "float":
            return [None if v is None else float(v) for v in values]
        return values


def _date(text: str | None) -> dt.date | None:
    if not text or len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
