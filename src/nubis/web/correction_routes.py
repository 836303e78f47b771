"""Corrections over HTTP, for admins: ``/corrections`` (nubis.services.corrections).

``POST /corrections`` with a JSON body makes one correction and answers it (201)::

    {"action": "update-study", "study": "1.2.3", "set": {"PatientName": "Doe^Jane"},
     "reason": "name misspelt at registration"}
    {"action": "update-patient", "patient": "PID-1", "set": {"PatientBirthDate": "19700102"},
     "reason": "..."}
    {"action": "move-study", "study": "1.2.3", "to_patient": "PID-2", "reason": "..."}
    {"action": "merge-patients", "from_patient": "PID-1", "into_patient": "PID-2",
     "reason": "..."}

``set`` maps attribute keywords (or tags) to DICOM text, null to empty one. Patient IDs travel
in the body, never in the URL, so they do not land in access logs. ``POST
/corrections/{id}/undo`` with ``{"reason": "..."}`` undoes one; ``GET
/corrections?study=&limit=`` lists them, newest first. Each answer is a correction as
``Correction.to_dict`` gives it (id, kind, reason, who, when, studies, and per study the
attributes changed, before and after).

The service authorizes (the ADMIN action: admin role, in its own tenant) and records every
change (Patient Record and DICOM Instances Accessed, EventActionCode U); a refusal is 403 and
recorded as Use of Restricted Function.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.services.corrections import Correction
from nubis.web.admin_api import NO_STORE, admin_caller, json_body, required_text
from nubis.web.dicomweb.common import check_uid


def correction_routes() -> list[Route]:
    return [
        Route("/corrections", list_corrections, methods=["GET"]),
        Route("/corrections", make_correction, methods=["POST"]),
        Route("/corrections/{correction_id:int}/undo", undo_correction, methods=["POST"]),
    ]


def _study(body: dict[str, Any]) -> str:
    return check_uid(required_text(body, "study"), "study")


def _changes(body: dict[str, Any], *, required: bool = True) -> dict[str, str | None]:
    changes = body.get("set")
    if changes is None and not required:
        return {}
    if not isinstance(changes, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in changes.items()
    ):
        raise BadRequest("'set' must map attribute keywords to strings or null")
    return changes


def _answer(correction: Correction, status: int = 201) -> Response:
    return JSONResponse(correction.to_dict(), status_code=status, headers=NO_STORE)


async def make_correction(request: Request) -> Response:
    """``POST /corrections``: one correction (see the module docs)."""
    archive, who = await run_in_threadpool(admin_caller, request, "correct studies")
    body = await json_body(request)
    service = archive.corrections
    action = body.get("action")
    reason = body.get("reason") if isinstance(body.get("reason"), str) else ""

    def run() -> Correction:
        if action == "update-study":
            return service.update_study(who, _study(body), _changes(body), reason=str(reason))
        if action == "update-patient":
            return service.update_patient(
                who, required_text(body, "patient"), _changes(body), reason=str(reason)
            )
        if action == "move-study":
            return service.move_study(
                who,
                _study(body),
                required_text(body, "to_patient"),
                reason=str(reason),
                changes=_changes(body, required=False),
            )
        if action == "merge-patients":
            return service.merge_patients(
                who,
                required_text(body, "from_patient"),
                required_text(body, "into_patient"),
                reason=str(reason),
            )
        raise BadRequest(
            "'action' must be update-study, update-patient, move-study or merge-patients"
        )

    return _answer(await run_in_threadpool(run))


async def undo_correction(request: Request) -> Response:
    """``POST /corrections/{id}/undo``: undo one correction, with a reason."""
    archive, who = await run_in_threadpool(admin_caller, request, "undo a correction")
    body = await json_body(request)
    reason = body.get("reason") if isinstance(body.get("reason"), str) else ""
    correction_id = int(request.path_params["correction_id"])
    return _answer(
        await run_in_threadpool(
            lambda: archive.corrections.undo(who, correction_id, reason=str(reason))
        )
    )


async def list_corrections(request: Request) -> Response:
    """``GET /corrections?study=&limit=``: the tenant's corrections, newest first."""
    archive, who = await run_in_threadpool(admin_caller, request, "list corrections")
    study = request.query_params.get("study") or None
    try:
        limit = int(request.query_params.get("limit", "100"))
    except ValueError:
        raise BadRequest("limit must be a number from 1 to 1000") from None
    found = await run_in_threadpool(
        lambda: archive.corrections.history(who, study_uid=study, limit=limit)
    )
    return JSONResponse({"corrections": [c.to_dict() for c in found]}, headers=NO_STORE)
