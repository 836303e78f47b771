"""Analyses handed out as UPS workitems (PS3.4 Annex CC): what such a workitem asks for, and
its claim, completion and cancellation by the ``analyze`` job, all through the worklist service
(nubis.services.worklist: the Guard, the audit trail and the UPS state machine).

A workitem asks for an analysis with the Scheduled Workitem Code Sequence (0040,4018) holding
(ANALYZE, 99NUBIS, "Analysis by a nubis analyzer"). Its Scheduled Processing Parameters
Sequence (0074,1210) names the analyzer in a TEXT content item whose concept is (ANALYZER,
99NUBIS, "Analyzer"); the study is the Study Instance UID (0020,000D) of the first item of
the Input Information Sequence (0040,4021), else the workitem's own Study Instance UID.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid

from nubis.analyzers.contract import AnalyzerError
from nubis.errors import WorkitemRefused
from nubis.model import workitem as wi
from nubis.model.workitem_search import parse_search
from nubis.security.policy import Principal
from nubis.services.worklist import WorklistService

__all__ = [
    "ANALYZER_CONCEPT",
    "ANALYZE_CODE",
    "SCHEME",
    "Requested",
    "cancel",
    "claim",
    "complete",
    "requested",
    "scheduled",
]

SCHEME = "99NUBIS"
ANALYZE_CODE = "ANALYZE"
ANALYZER_CONCEPT = "ANALYZER"
PROCESSING_PARAMETERS = "00741210"
INPUT_INFORMATION = "00404021"
OUTPUT_INFORMATION = "00404033"
PERFORMED_WORKITEM_CODES = "00404019"
SERIES_UID = "0020000E"
REFERENCED_SOPS = "00081199"
REFERENCED_SOP_CLASS = "00081150"
REFERENCED_SOP_INSTANCE = "00081155"
VALUE_TYPE = "0040A040"
CONCEPT_NAME_CODES = "0040A043"
TEXT_VALUE = "0040A160"
CODE_MEANING = "00080104"


class Requested:
    """What a workitem asks for: ``analyzer`` on ``study_uid``."""

    def __init__(self, analyzer: str, study_uid: str) -> None:
        self.analyzer = analyzer
        self.study_uid = study_uid


def requested(data: Mapping[str, Any]) -> Requested:
    """The analysis ``data`` (a workitem) asks for; AnalyzerError naming what is missing."""
    analyzer = None
    element = data.get(PROCESSING_PARAMETERS)
    items = element.get("Value") if isinstance(element, dict) else None
    for parameter in items if isinstance(items, list) else []:
        if not isinstance(parameter, dict):
            continue
        concept = wi.item(parameter, CONCEPT_NAME_CODES)
        if (
            wi.text(concept, wi.CODE_VALUE) == ANALYZER_CONCEPT
            and wi.text(concept, wi.CODING_SCHEME) == SCHEME
        ):
            analyzer = wi.text(parameter, TEXT_VALUE)
    if analyzer is None:
        raise AnalyzerError(
            "the workitem names no analyzer: a TEXT item (ANALYZER, 99NUBIS) in the "
            "Scheduled Processing Parameters Sequence (0074,1210)"
        )
    study = wi.text(wi.item(data, INPUT_INFORMATION), wi.STUDY_UID) or wi.text(data, wi.STUDY_UID)
    if study is None:
        raise AnalyzerError(
            "the workitem names no study: Study Instance UID (0020,000D) in the Input "
            "Information Sequence (0040,4021)"
        )
    return Requested(analyzer, study)


def scheduled(worklist: WorklistService, who: Principal, limit: int = 100) -> list[str]:
    """The UIDs of ``who``'s tenant's SCHEDULED, READY workitems that ask for an analysis."""
    query = parse_search(
        [
            ("ProcedureStepState", wi.State.SCHEDULED.value),
            ("InputReadinessState", "READY"),
            ("ScheduledWorkitemCodeSequence.CodeValue", ANALYZE_CODE),
            ("ScheduledWorkitemCodeSequence.CodingSchemeDesignator", SCHEME),
        ],
        max_limit=limit,
        default_limit=limit,
    )
    found, _ = worklist.search(who, query, text="workitems asking for an analysis")
    return [uid for data in found if (uid := wi.text(data, wi.SOP_INSTANCE_UID))]


def claim(worklist: WorklistService, who: Principal, uid: str) -> str | None:
    """Claim the workitem (IN PROGRESS with a new Transaction UID, PS3.4 CC.2.1): the
    Transaction UID, or None when it is no longer SCHEDULED (another performer has it)."""
    transaction = generate_uid(prefix=None)
    try:
        worklist.change_state(who, uid, _state(wi.State.IN_PROGRESS, transaction))
    except WorkitemRefused:
        return None
    return transaction


def complete(
    worklist: WorklistService,
    who: Principal,
    uid: str,
    transaction: str,
    *,
    started: str,
    study_uid: str,
    stored: Sequence[Mapping[str, str]],
) -> None:
    """Record what was done and complete the workitem: the Unified Procedure Step Performed
    Procedure Sequence (0074,1216) with its start and end, the code performed and the
    Output Information Sequence (0040,4033) referencing each result by series (the final state
    requirements of COMPLETED, PS3.4 CC.2.5.1.3)."""
    by_series: dict[str, list[Mapping[str, str]]] = {}
    for result in stored:
        by_series.setdefault(result["series_uid"], []).append(result)
    outputs = [
        {
            wi.STUDY_UID: {"vr": "UI", "Value": [study_uid]},
            SERIES_UID: {"vr": "UI", "Value": [series]},
            REFERENCED_SOPS: {
                "vr": "SQ",
                "Value": [
                    {
                        REFERENCED_SOP_CLASS: {"vr": "UI", "Value": [r["sop_class_uid"]]},
                        REFERENCED_SOP_INSTANCE: {"vr": "UI", "Value": [r["sop_instance_uid"]]},
                    }
                    for r in results
                ],
            },
        }
        for series, results in by_series.items()
    ]
    performed: dict[str, Any] = {
        wi.PERFORMED_START: {"vr": "DT", "Value": [started]},
        wi.PERFORMED_END: {"vr": "DT", "Value": [now_dt()]},
        PERFORMED_WORKITEM_CODES: {"vr": "SQ", "Value": [_analyze_code()]},
    }
    if outputs:
        performed[OUTPUT_INFORMATION] = {"vr": "SQ", "Value": outputs}
    worklist.update(
        who,
        uid,
        {
            wi.TRANSACTION_UID: {"vr": "UI", "Value": [transaction]},
            wi.PERFORMED_PROCEDURE: {"vr": "SQ", "Value": [performed]},
        },
    )
    worklist.change_state(who, uid, _state(wi.State.COMPLETED, transaction))


def cancel(
    worklist: WorklistService,
    who: Principal,
    uid: str,
    transaction: str,
    reason: str,
) -> None:
    """Cancel the claimed workitem with ``reason`` in its Procedure Step Progress Information
    Sequence (0074,1002) > Reason For Cancellation (0074,1238), as its performer does (PS3.4
    CC.2.1.3: an N-SET of the reason, then the state CANCELED)."""
    item = {wi.REASON_FOR_CANCELLATION: {"vr": "LT", "Value": [reason[:1024]]}}
    worklist.update(
        who,
        uid,
        {
            wi.TRANSACTION_UID: {"vr": "UI", "Value": [transaction]},
            wi.PROGRESS_INFORMATION: {"vr": "SQ", "Value": [item]},
        },
    )
    worklist.change_state(who, uid, _state(wi.State.CANCELED, transaction))


def now_dt() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def _state(state: wi.State, transaction: str) -> dict[str, Any]:
    return {
        wi.STATE: {"vr": "CS", "Value": [state.value]},
        wi.TRANSACTION_UID: {"vr": "UI", "Value": [transaction]},
    }


def _analyze_code() -> dict[str, Any]:
    return {
        wi.CODE_VALUE: {"vr": "SH", "Value": [ANALYZE_CODE]},
        wi.CODING_SCHEME: {"vr": "SH", "Value": [SCHEME]},
        CODE_MEANING: {"vr": "LO", "Value": ["Analysis by a nubis analyzer"]},
    }
