"""FHIR R4 ImagingStudy resources built from the index (issue 15): what an EHR links its
patients' records to.

A search or a read is one study-level query through :class:`QueryService` (authorized by the
Guard, scoped in the SQL, recorded as a Query like QIDO-RS: PS3.15 A.5.3.10), then the series
and instances of each study found, under that query's scope. A study outside the caller's scope
is absent, as in QIDO-RS: 404 for a read, left out of a search.

The mapping follows FHIR R4's ImagingStudy (https://hl7.org/fhir/R4/imagingstudy.html) and its
DICOM mapping: the resource's id is the Study Instance UID (a FHIR id: at most 64 characters of
digits, letters, '-' and '.'), identifiers are the study UID (``urn:dicom:uid``,
``urn:oid:...``) and the accession number (type ACSN), the subject is the patient by Patient
ID (no Patient resource exists here), and the ``endpoint`` is a contained Endpoint naming the
study's DICOMweb URL (WADO-RS). Body Part Examined is given as the coding's display: DICOM's
defined terms are no code system of FHIR's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nubis.errors import BadRequest, NotFound
from nubis.model.query import Level, parse_qido
from nubis.security.policy import Principal
from nubis.services.query import QueryService, ScopedQuery

DICOM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
UID_SYSTEM = "urn:dicom:uid"
RFC3986 = "urn:ietf:rfc:3986"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
ENDPOINT_ID = "dicomweb"
MAX_COUNT = 100

_STUDY, _SERIES, _SOP, _SOP_CLASS = "0020000D", "0020000E", "00080018", "00080016"
_SERIES_TAGS = frozenset(
    {
        0x0020000E,
        0x00080060,
        0x00200011,
        0x0008103E,
        0x00180015,
        0x00200060,
        0x00201209,
        0x00400244,
        0x00400245,
    }
)
_INSTANCE_TAGS = frozenset({0x0020000E, 0x00080018, 0x00080016, 0x00200013})
# QIDO-RS matching characters: a FHIR token matches exactly, so they are refused.
_WILDCARDS = frozenset("*?\\,")


@dataclass(frozen=True)
class StudyCriteria:
    """What a FHIR search asks for (each None: not asked); ``count`` studies from ``offset``."""

    patient_id: str | None = None
    study_uid: str | None = None
    accession_number: str | None = None
    count: int = 20
    offset: int = 0
    # Criteria no study meets (two different patients asked for): answered without a query.
    contradictory: bool = False


@dataclass(frozen=True)
class StudyPage:
    resources: list[dict[str, Any]]
    more: bool


class ImagingStudies:
    """ImagingStudy resources of the studies a caller may see (see the module docs)."""

    def __init__(self, query: QueryService) -> None:
        self.query = query

    def search(
        self, who: Principal, criteria: StudyCriteria, *, dicomweb_root: str, text: str
    ) -> StudyPage:
        """The studies matching ``criteria`` in ``who``'s scope, a page of them."""
        params = [("includefield", "all"), ("limit", str(criteria.count))]
        params.append(("offset", str(criteria.offset)))
        for keyword, value in (
            ("PatientID", criteria.patient_id),
            ("StudyInstanceUID", criteria.study_uid),
            ("AccessionNumber", criteria.accession_number),
        ):
            if value is not None:
                if not value or _WILDCARDS & set(value):
                    raise BadRequest(
                        f"{keyword}: a search value is matched exactly: not empty, and no "
                        "'*', '?', '\\' or ',' (several values are not supported)"
                    )
                params.append((keyword, value))
        query = parse_qido(Level.STUDY, params, max_limit=MAX_COUNT)
        # Authorized and recorded whatever follows: contradictory criteria too.
        scoped = self.query.scoped(who, query, text=text or "FHIR ImagingStudy search")
        if criteria.contradictory:
            return StudyPage([], False)
        page = self.query.page(scoped)
        resources = [self._resource(scoped, item, dicomweb_root) for item in page.items]
        return StudyPage(resources, page.more or len(page.items) == criteria.count)

    def read(
        self, who: Principal, study_uid: str, *, dicomweb_root: str, text: str
    ) -> dict[str, Any]:
        """The study ``study_uid`` in ``who``'s scope; NotFound when absent or out of it."""
        page = self.search(
            who, StudyCriteria(study_uid=study_uid, count=1), dicomweb_root=dicomweb_root, text=text
        )
        if not page.resources:
            raise NotFound(f"no ImagingStudy {study_uid}")
        return page.resources[0]

    def _resource(self, scoped: ScopedQuery, study: dict[str, Any], root: str) -> dict[str, Any]:
        uid = _value(study, _STUDY)
        assert uid is not None  # every study row has its UID
        series = list(self.query.within(scoped, Level.SERIES, uid, _SERIES_TAGS))
        instances: dict[str, list[dict[str, Any]]] = {}
        for item in self.query.within(scoped, Level.INSTANCE, uid, _INSTANCE_TAGS):
            instances.setdefault(_value(item, _SERIES) or "", []).append(_instance(item))
        return imaging_study(study, series, instances, f"{root}/studies/{uid}")


def imaging_study(
    study: dict[str, Any],
    series: list[dict[str, Any]],
    instances: dict[str, list[dict[str, Any]]],
    study_url: str,
) -> dict[str, Any]:
    """The ImagingStudy of a study's DICOM JSON (study, series and instance level items)."""
    uid = _value(study, _STUDY) or ""
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "contained": [
            {
                "resourceType": "Endpoint",
                "id": ENDPOINT_ID,
                "status": "active",
                "connectionType": {
                    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                    "code": "dicom-wado-rs",
                },
                "payloadType": [{"text": "DICOM WADO-RS"}],
                "payloadMimeType": ["application/dicom"],
                "address": study_url,
            }
        ],
        "identifier": [{"system": UID_SYSTEM, "value": f"urn:oid:{uid}"}],
        "status": "available",
        "subject": _subject(study),
        "endpoint": [{"reference": f"#{ENDPOINT_ID}"}],
    }
    accession = _value(study, "00080050")
    if accession:
        resource["identifier"].append({"type": ACSN, "value": accession})
    modalities = _values(study, "00080061")
    if modalities:
        resource["modality"] = [{"system": DICOM_SYSTEM, "code": m} for m in modalities]
    started = _started(
        _value(study, "00080020"), _value(study, "00080030"), _value(study, "00080201")
    )
    if started:
        resource["started"] = started
    resource["numberOfSeries"] = _int(study, "00201206", len(series))
    resource["numberOfInstances"] = _int(
        study, "00201208", sum(len(found) for found in instances.values())
    )
    description = _value(study, "00081030")
    if description:
        resource["description"] = description
    listed = [_series(item, instances.get(_value(item, _SERIES) or "", [])) for item in series]
    if listed:
        resource["series"] = listed
    return resource


def _series(item: dict[str, Any], instances: list[dict[str, Any]]) -> dict[str, Any]:
    modality = _value(item, "00080060") or "OT"  # Type 1 in DICOM, 1..1 in FHIR
    entry: dict[str, Any] = {
        "uid": _value(item, _SERIES),
        "modality": {"system": DICOM_SYSTEM, "code": modality},
        "endpoint": [{"reference": f"#{ENDPOINT_ID}"}],
    }
    number = _int(item, "00200011", None)
    if number is not None:
        entry["number"] = number
    description = _value(item, "0008103E")
    if description:
        entry["description"] = description
    entry["numberOfInstances"] = _int(item, "00201209", len(instances))
    body_part = _value(item, "00180015")
    if body_part:
        entry["bodySite"] = {"display": body_part}
    laterality = _value(item, "00200060")
    if laterality:
        entry["laterality"] = {"display": laterality}
    started = _started(_value(item, "00400244"), _value(item, "00400245"), None)
    if started:
        entry["started"] = started
    if instances:
        entry["instance"] = instances
    return entry


def _instance(item: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "uid": _value(item, _SOP),
        "sopClass": {"system": RFC3986, "code": f"urn:oid:{_value(item, _SOP_CLASS)}"},
    }
    number = _int(item, "00200013", None)
    if number is not None:
        entry["number"] = number
    return entry


def _subject(study: dict[str, Any]) -> dict[str, Any]:
    patient_id = _value(study, "00100020")
    if patient_id:
        return {"type": "Patient", "identifier": {"value": patient_id}}
    # subject is 1..1: a study without a Patient ID still names its (unknown) patient.
    return {"type": "Patient", "display": "unknown patient"}


def _started(date: str | None, time: str | None, offset: str | None) -> str | None:
    """A FHIR dateTime: the date, with the time only when the UTC offset is known (FHIR:
    a time SHALL carry its time zone)."""
    if not date or len(date) != 8 or not date.isdigit():
        return None
    day = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    digits = (time or "").split(".")[0]
    if not offset or len(offset) != 5 or len(digits) < 4 or not digits.isdigit():
        return day
    seconds = digits[4:6] or "00"
    return f"{day}T{digits[:2]}:{digits[2:4]}:{seconds}{offset[:3]}:{offset[3:]}"


def _values(item: dict[str, Any], tag: str) -> list[str]:
    element = item.get(tag) or {}
    return [str(v) for v in element.get("Value", ()) if v is not None and str(v)]


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = _values(item, tag)
    return values[0] if values else None


def _int(item: dict[str, Any], tag: str, default: int | None) -> int | None:
    value = _value(item, tag)
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


__all__ = ["MAX_COUNT", "ImagingStudies", "StudyCriteria", "StudyPage", "imaging_study"]
