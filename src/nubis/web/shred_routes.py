"""Crypto-shredding over HTTP, for admins: ``POST /keys/shred-patient`` (nubis.services.shredding).

The body names the patient, never the URL (so it lands in no access log)::

    {"patient": "PID-1"}

The answer (200) says how many patient keys were erased (0: none was held, nothing stored or
shredded already: a repeat is harmless, which a primary's replication relies on) and how many
of the patient's studies the index still holds. The service authorizes (ADMIN and DELETE in
the caller's own tenant) and records the attempt and its outcome; a refusal is 403, a re-key
of the patient's studies under way 409, a keyring that failed 503. An archive without
encryption at rest has no keys to shred: 404.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import NotFound
from nubis.web.admin_api import NO_STORE, admin_caller, json_body, required_text


def shred_routes() -> list[Route]:
    return [Route("/keys/shred-patient", shred_patient, methods=["POST"])]


async def shred_patient(request: Request) -> Response:
    # Refused before the body is read (403 but for admins), as the other admin APIs.
    archive, who = await run_in_threadpool(admin_caller, request, "crypto-shred a patient")
    body = await json_body(request)
    patient_id = required_text(body, "patient")
    if archive.shredding is None:
        raise NotFound("this archive encrypts nothing at rest: there is no key to shred")
    service = archive.shredding
    done = await run_in_threadpool(lambda: service.shred_patient(who, patient_id, front_door="web"))
    return JSONResponse(
        {
            "keys": done.keys,
            "studies": len(done.studies),
            "outcome_recorded": done.outcome_recorded,
        },
        headers=NO_STORE,
    )
