"""UPS event reports (PS3.4 CC.2.4, N-EVENT-REPORT) as DICOM JSON, what the event channel of
UPS-RS sends (PS3.18: one report, a DICOM JSON object, per WebSocket text message).

A report names the workitem (Affected SOP Instance UID), the UPS Event SOP Class and the Event
Type ID of PS3.4 Table CC.2.4-1, with that type's Event Information (Table CC.2.4-2). Only
state and cancellation attributes: never the workitem's patient attributes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from enum import IntEnum
from typing import Any

from nubis.model import workitem as wi

__all__ = ["UPS_EVENT_SOP_CLASS", "EventType", "cancel_requested", "state_report"]

UPS_EVENT_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.4"
_AFFECTED_SOP_CLASS = "00000002"
_AFFECTED_SOP_INSTANCE = "00001000"
_EVENT_TYPE_ID = "00001002"
_CONTACT_URI = "00741008"
_CONTACT_DISPLAY_NAME = "0074100A"


class EventType(IntEnum):
    """Event Type IDs of PS3.4 Table CC.2.4-1 (those nubis sends)."""

    STATE_REPORT = 1
    CANCEL_REQUESTED = 2


def _header(uid: str, event: EventType) -> dict[str, Any]:
    return {
        _AFFECTED_SOP_CLASS: {"vr": "UI", "Value": [UPS_EVENT_SOP_CLASS]},
        _AFFECTED_SOP_INSTANCE: {"vr": "UI", "Value": [uid]},
        _EVENT_TYPE_ID: {"vr": "US", "Value": [int(event)]},
    }


def _copied(source: Mapping[str, Any], report: dict[str, Any], *tags: str) -> None:
    for tag in tags:
        if tag in source:
            report[tag] = copy.deepcopy(source[tag])


def state_report(uid: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A UPS State Report of workitem ``uid`` whose data set is now ``data``: its Procedure
    Step State and Input Readiness State and, once CANCELED, the Reason For Cancellation and
    Discontinuation Reason Codes it was canceled with (PS3.4 Table CC.2.4-2)."""
    report = _header(uid, EventType.STATE_REPORT)
    _copied(data, report, wi.INPUT_READINESS, wi.STATE)
    if wi.text(data, wi.STATE) == wi.State.CANCELED.value:
        progress = wi.item(data, wi.PROGRESS_INFORMATION)
        _copied(progress, report, wi.DISCONTINUATION_REASON_CODES, wi.REASON_FOR_CANCELLATION)
    return dict(sorted(report.items()))


def cancel_requested(uid: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """A UPS Cancel Requested report for workitem ``uid``, with the reason and the contact the
    request gave (PS3.4 Table CC.2.4-2; the request's attributes, CC.2.2.3)."""
    report = _header(uid, EventType.CANCEL_REQUESTED)
    _copied(
        request,
        report,
        wi.REASON_FOR_CANCELLATION,
        wi.DISCONTINUATION_REASON_CODES,
        _CONTACT_URI,
        _CONTACT_DISPLAY_NAME,
    )
    return dict(sorted(report.items()))
