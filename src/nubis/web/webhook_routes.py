"""Webhook subscriptions over HTTP, for admins: ``/webhooks`` (nubis.services.webhooks).

``POST /webhooks`` subscribes a receiver and answers it with its signing secret, shown once
(201)::

    {"name": "ai-ct", "url": "https://ai.example.org/hooks/nubis", "role": "admin",
     "events": ["create"], "modalities": ["CT"], "match": "StudyDescription=*CHEST*"}

``GET /webhooks`` lists them (never a secret), ``DELETE /webhooks/{name}`` removes one,
``GET /webhooks/{name}/deliveries`` lists its dead letters and ``POST
/webhooks/{name}/replay`` (``{"sequence": N}`` for one) has the next delivery run send them
again. The service authorizes (ADMIN, in the admin's own tenant) and records each change.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.web.admin_api import NO_STORE, admin_caller, json_body, required_text


def webhook_routes() -> list[Route]:
    return [
        Route("/webhooks", list_webhooks, methods=["GET"]),
        Route("/webhooks", add_webhook, methods=["POST"]),
        Route("/webhooks/{name}", remove_webhook, methods=["DELETE"]),
        Route("/webhooks/{name}/deliveries", dead_letters, methods=["GET"]),
        Route("/webhooks/{name}/replay", replay, methods=["POST"]),
    ]


def _texts(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{name!r} must be a list of strings")
    return value


def _optional_text(body: dict[str, Any], name: str, default: str | None) -> str | None:
    value = body.get(name, default)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name!r} must be a string")
    return value


async def add_webhook(request: Request) -> Response:
    archive, who = await run_in_threadpool(admin_caller, request, "add a webhook")
    body = await json_body(request)
    name, url = required_text(body, "name"), required_text(body, "url")
    role = _optional_text(body, "role", "admin") or "admin"
    events, modalities = _texts(body, "events"), _texts(body, "modalities")
    match = _optional_text(body, "match", "") or ""
    tenant = _optional_text(body, "tenant", None)
    sub, secret = await run_in_threadpool(
        lambda: archive.webhooks.add(
            who,
            name,
            url,
            role=role,
            events=events,
            modalities=modalities,
            match=match,
            tenant=tenant,
        )
    )
    return JSONResponse({**sub.to_dict(), "secret": secret}, status_code=201, headers=NO_STORE)


async def list_webhooks(request: Request) -> Response:
    archive, who = await run_in_threadpool(admin_caller, request, "list webhooks")
    found = await run_in_threadpool(archive.webhooks.listed, who)
    return JSONResponse([s.to_dict() for s in found], headers=NO_STORE)


async def remove_webhook(request: Request) -> Response:
    archive, who = await run_in_threadpool(admin_caller, request, "remove a webhook")
    await run_in_threadpool(archive.webhooks.remove, who, request.path_params["name"])
    return Response(status_code=204)


async def dead_letters(request: Request) -> Response:
    archive, who = await run_in_threadpool(admin_caller, request, "list webhook dead letters")
    found = await run_in_threadpool(archive.webhooks.dead_letters, who, request.path_params["name"])
    return JSONResponse([d.to_dict() for d in found], headers=NO_STORE)


async def replay(request: Request) -> Response:
    archive, who = await run_in_threadpool(admin_caller, request, "replay webhook dead letters")
    body = await json_body(request)
    sequence = body.get("sequence")
    if sequence is not None and (not isinstance(sequence, int) or isinstance(sequence, bool)):
        raise BadRequest("'sequence' must be a whole number")
    count = await run_in_threadpool(
        archive.webhooks.replay, who, request.path_params["name"], sequence
    )
    return JSONResponse({"replay": count}, headers=NO_STORE)
