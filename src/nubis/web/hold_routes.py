"""Legal holds over HTTP, for admins: ``/legal-holds`` (nubis.services.legal_holds).

``POST /legal-holds`` with ``{"study": "1.2.3", "reason": "..."}``, ``{"patient": "PID-1",
"reason": "..."}`` or ``{"tenant": true, "reason": "..."}`` places a hold and answers it
(201); ``POST /legal-holds/{id}/release`` with ``{"reason": "..."}`` releases one; ``GET
/legal-holds?released=true`` lists the tenant's holds, newest first. Patient IDs travel in the
body, never in the URL. A held study's DELETE is 409 naming the hold's id only.

The service authorizes (ADMIN, in the caller's tenant) and records each change in its own
transaction (Patient Record, or Security Alert for a tenant's hold).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.services.legal_holds import HoldTarget
from nubis.web.admin_api import NO_STORE, admin_caller, json_body, required_text
from nubis.web.dicomweb.common import check_uid


def hold_routes() -> list[Route]:
    return [
        Route("/legal-holds", list_holds, methods=["GET"]),
        Route("/legal-holds", place_hold, methods=["POST"]),
        Route("/legal-holds/{hold_id:int}/release", release_hold, methods=["POST"]),
    ]


async def place_hold(request: Request) -> Response:
    """``POST /legal-holds``: hold a study, a patient or the tenant (see the module docs)."""
    archive, who = await run_in_threadpool(admin_caller, request, "place a legal hold")
    body = await json_body(request)
    named = [k for k in ("study", "patient", "tenant") if body.get(k) not in (None, False)]
    if len(named) != 1:
        raise BadRequest("name one of 'study', 'patient' or 'tenant': true")
    if named == ["tenant"] and body["tenant"] is not True:
        raise BadRequest("'tenant' must be true")
    target = HoldTarget(
        check_uid(required_text(body, "study"), "study") if "study" in named else None,
        required_text(body, "patient") if "patient" in named else None,
    )
    reason = body.get("reason") if isinstance(body.get("reason"), str) else ""
    hold = await run_in_threadpool(archive.legal_holds.place, who, target, str(reason))
    return JSONResponse(hold.to_dict(), status_code=201, headers=NO_STORE)


async def release_hold(request: Request) -> Response:
    """``POST /legal-holds/{id}/release``: release one, with a reason."""
    archive, who = await run_in_threadpool(admin_caller, request, "release a legal hold")
    body = await json_body(request)
    reason = body.get("reason") if isinstance(body.get("reason"), str) else ""
    hold_id = int(request.path_params["hold_id"])
    hold = await run_in_threadpool(archive.legal_holds.release, who, hold_id, str(reason))
    return JSONResponse(hold.to_dict(), headers=NO_STORE)


async def list_holds(request: Request) -> Response:
    """``GET /legal-holds?released=true``: the tenant's holds (active ones by default)."""
    archive, who = await run_in_threadpool(admin_caller, request, "list legal holds")
    released = request.query_params.get("released", "false").lower()
    if released not in ("true", "false"):
        raise BadRequest("released must be true or false")
    found = await run_in_threadpool(
        lambda: archive.legal_holds.list(who, include_released=released == "true")
    )
    return JSONResponse({"legal_holds": [h.to_dict() for h in found]}, headers=NO_STORE)
