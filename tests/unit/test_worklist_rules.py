"""The rules of a workitem, without an archive: the state machine of PS3.4 Table CC.1.1-2
with the HTTP statuses of PS3.18 11.7.3, what a new workitem must hold (PS3.4 Table
CC.2.5-3), the final state requirements (CC.2.5.1.3), and Search's matching keys (PS3.18
11.9, PS3.4 C.2.2.2)."""

from __future__ import annotations

import pytest

from nubis.errors import BadRequest, WorkitemRefused
from nubis.model import workitem as wi
from nubis.model.workitem import State
from nubis.model.workitem_search import Match, parse_filter, parse_search
from nubis.services.worklist import check_ae_title, transition

MINE, OTHER = "1.2.3.4", "1.2.3.5"
S, P, X, C = State.SCHEDULED, State.IN_PROGRESS, State.CANCELED, State.COMPLETED

# (current state, requested, Transaction UID given) -> (HTTP status, UPS status) of the
# refusal, or the state reached. The workitem IN PROGRESS holds MINE.
REFUSED = [
    (S, "COMPLETED", MINE, 409, 0xC310),  # not yet IN PROGRESS
    (S, "CANCELED", MINE, 409, 0xC310),
    (S, "IN PROGRESS", None, 400, 0xC301),  # a claim brings its Transaction UID
    (P, "IN PROGRESS", OTHER, 409, 0xC302),  # claimed twice
    (P, "COMPLETED", None, 400, 0xC301),  # missing
    (P, "COMPLETED", OTHER, 400, 0xC301),  # incorrect
    (P, "CANCELED", OTHER, 400, 0xC301),
    (X, "IN PROGRESS", MINE, 409, 0xC300),  # final
    (C, "IN PROGRESS", MINE, 409, 0xC300),
    (X, "COMPLETED", MINE, 409, 0xC300),
    (C, "CANCELED", MINE, 409, 0xC300),
    (S, "SCHEDULED", None, 400, 0xC303),  # only a creation makes a workitem SCHEDULED
    (P, "SCHEDULED", MINE, 400, 0xC303),
]


@pytest.mark.parametrize(("current", "requested", "given", "http", "status"), REFUSED)
def test_refused_transitions(
    current: State, requested: str, given: str | None, http: int, status: int
) -> None:
    held = MINE if current is P else None
    with pytest.raises(WorkitemRefused) as refused:
        transition(current, requested, given, held)
    assert (refused.value.http_status, refused.value.dimse_status) == (http, status)
    assert f"(0x{status:04X})" in refused.value.http_headers()["warning"]


def test_allowed_transitions() -> None:
    claim = transition(S, "IN PROGRESS", MINE, None)
    assert (claim.state, claim.transaction_uid, claim.warning) == (P, MINE, None)
    for final in ("COMPLETED", "CANCELED"):
        step = transition(P, final, MINE, MINE)
        assert (step.state.value, step.transaction_uid, step.warning) == (final, None, None)
    # Asking for the state a final workitem is in: a warning, no change (B306, B304).
    assert transition(C, "COMPLETED", None, None).warning[0] == 0xB306  # type: ignore[index]
    assert transition(X, "CANCELED", None, None).warning[0] == 0xB304  # type: ignore[index]
    with pytest.raises(BadRequest):
        transition(S, "DONE", MINE, None)


def _new() -> dict[str, dict[str, object]]:
    return {
        "00741200": {"vr": "CS", "Value": ["HIGH"]},
        "00741204": {"vr": "LO", "Value": ["label"]},
        "00404005": {"vr": "DT", "Value": ["20260101120000.5+0100"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
    }


def test_new_workitem() -> None:
    data = wi.check_new(_new(), MINE)
    assert wi.text(data, wi.STATE) == "SCHEDULED"
    assert wi.text(data, wi.SOP_INSTANCE_UID) == MINE
    assert wi.text(data, wi.SOP_CLASS_UID) == wi.UPS_PUSH_SOP_CLASS
    assert wi.Columns.of(data).scheduled_start == "20260101120000"
    for tag in ("00741200", "00741204", "00404005", "00404041"):
        lacking = _new()
        del lacking[tag]
        with pytest.raises(BadRequest, match=r"Table CC\.2\.5-3"):
            wi.check_new(lacking, MINE)
    for tag, bad in (("00741200", "URGENT"), ("00404041", "SOON"), ("00404005", "tomorrow")):
        with pytest.raises(BadRequest):
            wi.check_new({**_new(), tag: {"vr": "CS", "Value": [bad]}}, MINE)
    with pytest.raises(BadRequest, match="Transaction UID"):
        wi.check_new({**_new(), wi.TRANSACTION_UID: {"vr": "UI", "Value": [OTHER]}}, MINE)
    with pytest.raises(BadRequest, match="SOP Instance UID"):
        wi.check_new({**_new(), wi.SOP_INSTANCE_UID: {"vr": "UI", "Value": [OTHER]}}, MINE)


def test_update_may_not_touch_state_or_uids() -> None:
    for tag in (wi.STATE, wi.SOP_INSTANCE_UID, wi.SOP_CLASS_UID):
        with pytest.raises(BadRequest):
            wi.check_update({tag: {"vr": "CS", "Value": ["x"]}})
    data = wi.updated(
        wi.check_new(_new(), MINE),
        {"00741204": {"vr": "LO", "Value": ["new"]}, "00741202": {"vr": "LO"}},
    )
    assert wi.text(data, "00741204") == "new" and "00741202" not in data
    # Type 1 attributes stay (PS3.4 Table CC.2.5-3), values fit their columns.
    with pytest.raises(BadRequest, match="Procedure Step Label"):
        wi.updated(data, {"00741204": {"vr": "LO"}})
    with pytest.raises(BadRequest, match="Patient ID"):
        wi.updated(data, {"00100020": {"vr": "LO", "Value": ["x" * 65]}})
    long_code = {"00080100": {"vr": "SH", "Value": ["c" * 65]}}
    with pytest.raises(BadRequest, match="0040,4018"):
        wi.check_new({**_new(), "00404018": {"vr": "SQ", "Value": [long_code]}}, MINE)


def test_final_state_requirements_of_completed() -> None:
    """PS3.4 CC.2.5.1.3: the Performed Procedure Sequence with start and end."""
    assert "0074,1216" in (wi.completion_missing({}) or "")
    item = {"00404050": {"vr": "DT", "Value": ["20260101120000"]}}
    performed = {"00741216": {"vr": "SQ", "Value": [item]}}
    assert "0040,4051" in (wi.completion_missing(performed) or "")
    item["00404051"] = {"vr": "DT", "Value": ["20260101130000"]}
    assert wi.completion_missing(performed) is None


def test_search_keys() -> None:
    query = parse_search(
        [
            ("ProcedureStepState", "SCHEDULED"),
            ("00404005", "20260101-202602"),
            ("ScheduledWorkitemCodeSequence.CodeValue", "X"),
            ("PatientName", "doe^j*"),
            ("SOPInstanceUID", f"{MINE},{OTHER}"),
            ("PatientID", ""),  # universal matching: no condition
            ("includefield", "all"),
        ],
        max_limit=10,
        default_limit=5,
    )
    assert query.matches == (
        Match("state", "exact", ("SCHEDULED",)),
        Match("scheduled_start", "range", ("20260101000000", "20260231235959")),
        Match("workitem_code_value", "exact", ("X",)),
        Match("patient_name_folded", "wildcard", ("DOE^J*",)),
        Match("workitem_uid", "uids", (MINE, OTHER)),
    )
    assert query.limit == 5
    capped = parse_search([("limit", "50")], max_limit=10, default_limit=5)
    assert capped.limit == 10 and capped.warnings
    for params in (
        [("Modality", "CT")],  # not a matching key of the worklist
        [("NotAKeyword", "1")],
        [("ProcedureStepState", "DONE")],
        [("00404005", "yesterday")],
        [("StudyInstanceUID", "not a uid")],
        [("limit", "-1")],
        [("PatientID", "a"), ("PatientID", "b")],
    ):
        with pytest.raises(BadRequest):
            parse_search(params, max_limit=10, default_limit=5)


def test_subscription_filter() -> None:
    """The filter of a Filtered Worklist subscription (PS3.18 11.10.1.2)."""
    query = parse_filter("ProcedureStepState=SCHEDULED,00404018.00080100=AI")
    assert [m.column for m in query.matches] == ["state", "workitem_code_value"]
    for bad in ("ProcedureStepState", "limit=3", "Modality=CT"):
        with pytest.raises(BadRequest):
            parse_filter(bad)


def test_ae_titles() -> None:
    assert check_ae_title("AI_QC ") == "AI_QC"
    for bad in ("", " " * 4, "A" * 17, "A\\B", "A\x00"):
        with pytest.raises(BadRequest):
            check_ae_title(bad)
