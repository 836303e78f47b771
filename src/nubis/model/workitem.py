"""A workitem: a Unified Procedure Step instance (PS3.4 Annex CC) as DICOM JSON, and the rules
its data set obeys whoever sends it.

The state machine itself (who may move a workitem from which state to which) is
nubis.services.worklist's; this module says what a data set must hold to be created, what an
update may not touch, what a workitem must hold to be COMPLETED or CANCELED (PS3.4 CC.2.5.1.3),
and which values the index keeps in columns for Search (PS3.18 11.9).
"""

from __future__ import annotations

import copy
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from nubis.dicom.uids import is_usable
from nubis.errors import BadRequest
from nubis.model.query import fold_person_name

# PS3.6 Table: the UPS Push SOP Class, what a created workitem is an instance of, and
# the well-known UIDs naming the worklist as a subscription's target (PS3.4 CC.3.1).
UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
UPS_PULL_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.3"
WORKLIST_UID = "1.2.840.10008.5.1.4.34.5"
FILTERED_WORKLIST_UID = "1.2.840.10008.5.1.4.34.5.1"

JsonDataSet = dict[str, Any]

SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
TRANSACTION_UID = "00081195"
PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
STUDY_UID = "0020000D"
SCHEDULED_START = "00404005"
WORKITEM_CODES = "00404018"
STATION_NAME_CODES = "00404025"
INPUT_READINESS = "00404041"
STATE = "00741000"
PROGRESS_INFORMATION = "00741002"
DISCONTINUATION_REASON_CODES = "0074100E"
PRIORITY = "00741200"
WORKLIST_LABEL = "00741202"
PROCEDURE_STEP_LABEL = "00741204"
PERFORMED_PROCEDURE = "00741216"
REASON_FOR_CANCELLATION = "00741238"
CANCELLATION_DATETIME = "00404052"
PERFORMED_START = "00404050"
PERFORMED_END = "00404051"
CODE_VALUE = "00080100"
CODING_SCHEME = "00080102"


class State(enum.StrEnum):
    """Procedure Step State (0074,1000), PS3.4 CC.1.1."""

    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    CANCELED = "CANCELED"
    COMPLETED = "COMPLETED"

    @property
    def final(self) -> bool:
        return self in (State.CANCELED, State.COMPLETED)


_ENUMERATED = {
    PRIORITY: ("Scheduled Procedure Step Priority", ("HIGH", "MEDIUM", "LOW")),
    INPUT_READINESS: ("Input Readiness State", ("READY", "UNAVAILABLE", "INCOMPLETE")),
}
# Type 1 at N-CREATE (PS3.4 Table CC.2.5-3): present with a value in every new workitem.
_REQUIRED_AT_CREATE = {
    PRIORITY: "Scheduled Procedure Step Priority (0074,1200)",
    PROCEDURE_STEP_LABEL: "Procedure Step Label (0074,1204)",
    SCHEDULED_START: "Scheduled Procedure Step Start DateTime (0040,4005)",
    INPUT_READINESS: "Input Readiness State (0040,4041)",
}
# What an update (N-SET, PS3.18 11.6) may not change: the state changes only through Change
# Workitem State, the UIDs name the workitem, the Transaction UID is the claim's lock.
_NOT_UPDATABLE = {
    STATE: "Procedure Step State (0074,1000) changes only through Change Workitem State",
    SOP_CLASS_UID: "SOP Class UID (0008,0016) cannot be updated",
    SOP_INSTANCE_UID: "SOP Instance UID (0008,0018) names the workitem and cannot be updated",
}
_DT_RE = re.compile(r"[0-9]{4,14}(\.[0-9]{1,6})?([+-][0-9]{4})?\Z")


def value(data: Mapping[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON data set, or None."""
    element = data.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None


def text(data: Mapping[str, Any], tag: str) -> str | None:
    found = value(data, tag)
    if isinstance(found, dict):  # PN
        found = found.get("Alphabetic")
    return str(found) if found is not None and str(found).strip() else None


def item(data: Mapping[str, Any], tag: str) -> Mapping[str, Any]:
    """The first item of a sequence, or an empty one."""
    found = value(data, tag)
    return found if isinstance(found, dict) else {}


def parse_data_set(payload: Any, what: str) -> JsonDataSet:
    """A DICOM JSON data set (PS3.18 F.2) from a request payload: an array of one object, or
    the object. Read through pydicom, so a malformed element is a 400 naming it."""
    if isinstance(payload, list) and len(payload) == 1:
        payload = payload[0]
    if not isinstance(payload, dict):
        raise BadRequest(f"the {what} must be one DICOM JSON data set (PS3.18 F.2)")
    for tag, element in payload.items():
        if isinstance(element, dict) and ("BulkDataURI" in element or "InlineBinary" in element):
            raise BadRequest(f"({tag[:4]},{tag[4:8]}): a workitem holds no bulk data")
    try:
        Dataset.from_json(payload)
    except Exception as exc:  # pydicom raises many kinds for a malformed element
        raise BadRequest(f"the {what} is not valid DICOM JSON: {type(exc).__name__}") from None
    return payload


def check_new(data: JsonDataSet, workitem_uid: str) -> JsonDataSet:
    """The data set of a new workitem (PS3.4 CC.2.5.1.1, Table CC.2.5-3 N-CREATE): SCHEDULED,
    with the Type 1 attributes, named by ``workitem_uid``; the Transaction UID left out (a
    workitem is claimed later, and its lock is never part of its data set)."""
    data = copy.deepcopy(data)
    state = text(data, STATE)
    if state is not None and state != State.SCHEDULED:
        raise BadRequest(
            "a new workitem's Procedure Step State (0074,1000) must be SCHEDULED (PS3.4 CC.1.1)"
        )
    given = text(data, SOP_INSTANCE_UID)
    if given is not None and given != workitem_uid:
        raise BadRequest("the SOP Instance UID (0008,0018) differs from the workitem's UID")
    if text(data, TRANSACTION_UID) is not None:
        raise BadRequest(
            "a new workitem has no Transaction UID (0008,1195): the performer gives one when "
            "it claims the workitem (PS3.4 CC.1.1)"
        )
    data.pop(TRANSACTION_UID, None)
    _check_required(data, "a new workitem needs")
    _check_values(data)
    data[STATE] = {"vr": "CS", "Value": [State.SCHEDULED.value]}
    data[SOP_CLASS_UID] = {"vr": "UI", "Value": [UPS_PUSH_SOP_CLASS]}
    data[SOP_INSTANCE_UID] = {"vr": "UI", "Value": [workitem_uid]}
    return data


def check_update(changes: JsonDataSet) -> JsonDataSet:
    """The attributes an update sets (PS3.18 11.6.1.4), without the Transaction UID, which
    the service checks apart."""
    changes = {tag: element for tag, element in changes.items() if tag != TRANSACTION_UID}
    for tag, reason in _NOT_UPDATABLE.items():
        if tag in changes:
            raise BadRequest(reason)
    _check_values(changes)
    return changes


def updated(data: JsonDataSet, changes: JsonDataSet) -> JsonDataSet:
    """``data`` with ``changes`` applied: each attribute given replaces the stored one whole,
    an empty one removes it (N-SET, PS3.7 10.1.3)."""
    merged = copy.deepcopy(data)
    for tag, element in changes.items():
        if isinstance(element, dict) and not element.get("Value"):
            merged.pop(tag, None)
        else:
            merged[tag] = copy.deepcopy(element)
    _check_required(merged, "a workitem keeps")
    _check_lengths(merged)
    return dict(sorted(merged.items()))


def _check_required(data: Mapping[str, Any], what: str) -> None:
    missing = [name for tag, name in _REQUIRED_AT_CREATE.items() if text(data, tag) is None]
    if missing:
        raise BadRequest(f"{what} {', '.join(missing)} (PS3.4 Table CC.2.5-3)")


# The longest value of each attribute the index keeps in a column (PS3.5 Table 6.2-1 for its
# VR): a longer one is refused here rather than by the database.
_MAX_CHARS = {
    PATIENT_ID: ("Patient ID (0010,0020)", 64),
    PATIENT_NAME: ("Patient's Name (0010,0010)", 324),
    WORKLIST_LABEL: ("Worklist Label (0074,1202)", 64),
    STUDY_UID: ("Study Instance UID (0020,000D)", 64),
}
_MAX_CODE_CHARS = 64


def _check_lengths(data: Mapping[str, Any]) -> None:
    for tag, (name, limit) in _MAX_CHARS.items():
        found = text(data, tag)
        if found is not None and len(found) > limit:
            raise BadRequest(f"{name} is longer than {limit} characters")
    for sequence in (WORKITEM_CODES, STATION_NAME_CODES):
        for tag in (CODE_VALUE, CODING_SCHEME):
            found = text(item(data, sequence), tag)
            if found is not None and len(found) > _MAX_CODE_CHARS:
                raise BadRequest(
                    f"a code in ({sequence[:4]},{sequence[4:]}) is longer than "
                    f"{_MAX_CODE_CHARS} characters"
                )


def _check_values(data: Mapping[str, Any]) -> None:
    _check_lengths(data)
    for tag, (name, allowed) in _ENUMERATED.items():
        given = text(data, tag)
        if given is not None and given not in allowed:
            raise BadRequest(f"{name} must be one of {', '.join(allowed)}")
    start = text(data, SCHEDULED_START)
    if start is not None and not _DT_RE.match(start):
        raise BadRequest("Scheduled Procedure Step Start DateTime (0040,4005) is not a DT value")


def completion_missing(data: Mapping[str, Any]) -> str | None:
    """What keeps ``data`` from the final state COMPLETED (PS3.4 CC.2.5.1.3: the Unified
    Procedure Step Performed Procedure Sequence with its Performed Procedure Step Start and End
    DateTime), or None when it may be completed."""
    performed = item(data, PERFORMED_PROCEDURE)
    if not performed:
        return "the Unified Procedure Step Performed Procedure Sequence (0074,1216) is missing"
    for tag, name in (
        (PERFORMED_START, "Performed Procedure Step Start DateTime (0040,4050)"),
        (PERFORMED_END, "Performed Procedure Step End DateTime (0040,4051)"),
    ):
        if text(performed, tag) is None:
            return f"{name} is missing from the Performed Procedure Sequence"
    return None


def canceled(data: JsonDataSet, request: Mapping[str, Any], now_dt: str) -> JsonDataSet:
    """``data`` as CANCELED: the Procedure Step Progress Information Sequence gets the
    cancellation's date and time and, when the request gave them, its reason and reason codes
    (the final state requirements of CANCELED, PS3.4 CC.2.5.1.3)."""
    result = copy.deepcopy(data)
    progress = dict(item(result, PROGRESS_INFORMATION))
    progress.setdefault(CANCELLATION_DATETIME, {"vr": "DT", "Value": [now_dt]})
    for tag in (REASON_FOR_CANCELLATION, DISCONTINUATION_REASON_CODES):
        if tag in request:
            progress[tag] = copy.deepcopy(request[tag])
    result[PROGRESS_INFORMATION] = {"vr": "SQ", "Value": [dict(sorted(progress.items()))]}
    return with_state(result, State.CANCELED)


def with_state(data: JsonDataSet, state: State) -> JsonDataSet:
    result = dict(data)
    result[STATE] = {"vr": "CS", "Value": [state.value]}
    return result


def start_key(dt: str) -> str:
    """A DT value (or the start of one) as the ``scheduled_start`` column keeps it: date and
    time to the second, the fraction and offset dropped, missing digits as zeros."""
    digits = dt.split(".")[0].split("+")[0].split("-")[0]
    return (digits + "00000000000000")[:14]


@dataclass(frozen=True)
class Columns:
    """The values of a workitem the index keeps in columns for Search."""

    state: str
    priority: str | None
    worklist_label: str | None
    input_readiness: str | None
    scheduled_start: str | None
    patient_id: str | None
    patient_name_folded: str | None
    study_uid: str | None
    workitem_code_value: str | None
    workitem_code_scheme: str | None
    station_code_value: str | None
    station_code_scheme: str | None

    @staticmethod
    def of(data: Mapping[str, Any]) -> Columns:
        start = text(data, SCHEDULED_START)
        name = text(data, PATIENT_NAME)
        study = text(data, STUDY_UID)
        workitem_code, station_code = item(data, WORKITEM_CODES), item(data, STATION_NAME_CODES)
        return Columns(
            state=text(data, STATE) or State.SCHEDULED.value,
            priority=text(data, PRIORITY),
            worklist_label=text(data, WORKLIST_LABEL),
            input_readiness=text(data, INPUT_READINESS),
            scheduled_start=start_key(start) if start else None,
            patient_id=text(data, PATIENT_ID),
            patient_name_folded=fold_person_name(name) if name else None,
            study_uid=study if study and is_usable(study) else None,
            workitem_code_value=text(workitem_code, CODE_VALUE),
            workitem_code_scheme=text(workitem_code, CODING_SCHEME),
            station_code_value=text(station_code, CODE_VALUE),
            station_code_scheme=text(station_code, CODING_SCHEME),
        )


__all__ = [
    "FILTERED_WORKLIST_UID",
    "UPS_PULL_SOP_CLASS",
    "UPS_PUSH_SOP_CLASS",
    "WORKLIST_UID",
    "Columns",
    "JsonDataSet",
    "State",
    "canceled",
    "check_new",
    "check_update",
    "completion_missing",
    "item",
    "parse_data_set",
    "start_key",
    "text",
    "updated",
    "value",
    "with_state",
]
