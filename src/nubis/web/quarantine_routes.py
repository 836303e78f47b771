"""Studies held in quarantine over HTTP, for admins: ``/quarantine``
(nubis.services.quarantine; docs/security.md, "One study, one patient").

``GET /quarantine`` lists the held studies of the caller's tenant, oldest first::

    {"studies": [{"study_uid": "1.2.3", "reasons": ["patient-conflict"], "since": 1700000000000,
                  "instances": 3, "patients": {"PID-1": 2, "PID-2": 1}}]}

``reasons`` are the codes of what the study is held for (``patient-conflict``: its instances
name other Patient IDs; ``series-conflict``: one of its Series Instance UIDs is another
study's), ``patients`` the instances per Patient ID as stored (the listing is recorded as a
read of each patient's record). Patient IDs travel in the body only, never in a URL.

``POST /quarantine/{study}/release`` with ``{"reason": "...", "resolved": false}`` lets one
out, exactly as ``nubis storage release`` does: 200 with the released study; 404 when it is not
held in the caller's tenant; 409 while its instances still disagree (or another study holds
one of its series UIDs) and ``resolved`` is not true; 400 without a reason. The service
authorizes (the ADMIN action: admin role, in its own tenant, decided before the body is read;
a refusal is 403 and recorded as Use of Restricted Function) and records the release
(Instances Accessed, EventActionCode U, with the reason).
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.services.quarantine import QuarantinedStudy
from nubis.web.admin_api import NO_STORE, admin_caller, json_body, required_text
from nubis.web.dicomweb.common import check_uid


def quarantine_routes() -> list[Route]:
    return [
        Route("/quarantine", list_held, methods=["GET"]),
        Route("/quarantine/{study}/release", release, methods=["POST"]),
    ]


def _study(held: QuarantinedStudy, patients: dict[str, int] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "study_uid": held.study_uid,
        "reasons": list(held.reasons),
        "since": held.since,
        "instances": held.instances,
    }
    if patients is not None:
        answer["patients"] = patients
    return answer


async def list_held(request: Request) -> Response:
    """``GET /quarantine``: the tenant's held studies (see the module docs)."""
    archive, who = await run_in_threadpool(admin_caller, request, "list quarantined studies")

    def run() -> list[dict[str, Any]]:
        service = archive.quarantine
        return [_study(s, service.patients_of(who, s.study_uid)) for s in service.held(who)]

    return JSONResponse({"studies": await run_in_threadpool(run)}, headers=NO_STORE)


async def release(request: Request) -> Response:
    """``POST /quarantine/{study}/release``: let one study out, with a reason."""
    archive, who = await run_in_threadpool(admin_caller, request, "release a quarantined study")
    study = check_uid(request.path_params["study"], "study")
    body = await json_body(request)
    reason = required_text(body, "reason")
    resolved = body.get("resolved", False)
    if not isinstance(resolved, bool):
        raise BadRequest("'resolved' must be true or false")
    released = await run_in_threadpool(
        lambda: archive.quarantine.release(who, study, reason=reason, resolved=resolved)
    )
    return JSONResponse({**_study(released), "released": True}, headers=NO_STORE)
