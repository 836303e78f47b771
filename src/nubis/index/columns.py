"""What the index keeps of a stored object: its DICOM JSON metadata (nubis.dicom.inspect)
mapped to the study, series and instance columns and JSON that index/store_sql.py writes.

The columns are what QIDO-RS and C-FIND match on (index/query_sql.py); everything else is
answered from the JSON kept beside them.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.datadict import tag_for_keyword

from nubis.dicom.inspect import InspectedInstance
from nubis.dicom.levels import series_level, study_level
from nubis.index.schema import series, studies
from nubis.model.query import fold_person_name
from nubis.model.records import NewInstance

__all__ = ["json_text", "new_instance", "study_columns"]


def json_text(metadata: dict[str, Any], keyword: str, column: Any = None) -> str | None:
    """A value as DICOM text, from the JSON metadata (already decoded once by inspect); cut
    to ``column``'s declared length when one is given."""
    element = metadata.get(_TAG_HEX[keyword])
    values = element.get("Value") if element else None
    if not values:
        return None
    parts = [
        _person_name(v) if isinstance(v, dict) else ("" if v is None else str(v)) for v in values
    ]
    text = "\\".join(parts)
    length = getattr(getattr(column, "type", None), "length", None)
    # The full value stays in the JSON metadata; a column holds at most its declared length.
    return text[:length] if length else text


def _person_name(value: dict[str, str]) -> str:
    groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _folded(text: str | None) -> str | None:
    return fold_person_name(text) if text is not None else None


def _json_int(metadata: dict[str, Any], keyword: str) -> int | None:
    text = json_text(metadata, keyword)
    try:
        return int(float(text.split("\\")[0])) if text else None
    except ValueError:
        return None


def _request_ids(metadata: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    element = metadata.get(_TAG_HEX["RequestAttributesSequence"])
    return [
        (json_text(item, "ScheduledProcedureStepID"), json_text(item, "RequestedProcedureID"))
        for item in (element.get("Value") or [] if element else [])
    ]


_TAG_HEX = {
    keyword: f"{tag_for_keyword(keyword):08X}"
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "StudyID",
        "TimezoneOffsetFromUTC",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "RequestAttributesSequence",
        "ScheduledProcedureStepID",
        "RequestedProcedureID",
    )
}


def study_columns(metadata: dict[str, Any]) -> dict[str, str | None]:
    """The study row's patient and study columns from DICOM JSON (an object's metadata, or a
    study's corrected attributes, nubis.services.corrections), values cut to each column."""
    s = studies.c
    patient_name = json_text(metadata, "PatientName", s.patient_name)
    referring = json_text(metadata, "ReferringPhysicianName", s.referring_physician_name)
    return {
        "patient_id": json_text(metadata, "PatientID", s.patient_id),
        "patient_name": patient_name,
        "patient_name_folded": _folded(patient_name),
        "patient_birth_date": json_text(metadata, "PatientBirthDate", s.patient_birth_date),
        "patient_sex": json_text(metadata, "PatientSex", s.patient_sex),
        "study_date": json_text(metadata, "StudyDate", s.study_date),
        "study_time": json_text(metadata, "StudyTime", s.study_time),
        "accession_number": json_text(metadata, "AccessionNumber", s.accession_number),
        "referring_physician_name": referring,
        "referring_physician_name_folded": _folded(referring),
        "study_description": json_text(metadata, "StudyDescription", s.study_description),
        "study_id": json_text(metadata, "StudyID", s.study_id),
        "timezone_offset": json_text(metadata, "TimezoneOffsetFromUTC", s.timezone_offset),
    }


def new_instance(
    inspected: InspectedInstance, *, blob_key: str, size: int, sha256: str, partition: str
) -> NewInstance:
    """The index rows of a stored object: its study, series and instance columns (values cut
    to each column's length; the whole value stays in the JSON metadata), the request IDs, and
    the JSON the index keeps of each level."""
    metadata = inspected.metadata
    se = series.c
    study_attrs = {t: v for t, v in metadata.items() if study_level(int(t, 16))}
    series_attrs = {t: v for t, v in metadata.items() if series_level(int(t, 16))}
    requests = _request_ids(metadata)
    return NewInstance(
        partition=partition,
        study_uid=inspected.study_instance_uid,
        series_uid=inspected.series_instance_uid,
        sop_instance_uid=inspected.sop_instance_uid,
        sop_class_uid=inspected.sop_class_uid,
        transfer_syntax_uid=inspected.transfer_syntax_uid,
        blob_key=blob_key,
        size=size,
        sha256=sha256,
        study_columns=study_columns(metadata),
        series_columns={
            "modality": json_text(metadata, "Modality", se.modality),
            "series_number": _json_int(metadata, "SeriesNumber"),
            "series_description": json_text(metadata, "SeriesDescription", se.series_description),
            "performed_date": json_text(
                metadata, "PerformedProcedureStepStartDate", se.performed_date
            ),
            "performed_time": json_text(
                metadata, "PerformedProcedureStepStartTime", se.performed_time
            ),
            "timezone_offset": json_text(metadata, "TimezoneOffsetFromUTC", se.timezone_offset),
        },
        instance_columns={
            "instance_number": _json_int(metadata, "InstanceNumber"),
            "rows": _json_int(metadata, "Rows"),
            "columns": _json_int(metadata, "Columns"),
            "bits_allocated": _json_int(metadata, "BitsAllocated"),
            "number_of_frames": _json_int(metadata, "NumberOfFrames"),
        },
        requests=requests,
        study_attrs_json=_compact(study_attrs),
        series_attrs_json=_compact(series_attrs),
        metadata_json=inspected.metadata_json,
        frame_index_json=(
            None if inspected.frame_index is None else _compact(inspected.frame_index)
        ),
        bulk_index_json=_compact(inspected.bulk_index) if inspected.bulk_index else None,
        warnings=inspected.warnings,
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
