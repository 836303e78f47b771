"""UPS-RS, the Worklist Service (PS3.18 11): workitems created, searched, retrieved, updated,
claimed, completed and canceled, and subscriptions to their events.

Thin: each route reads its request (DICOM JSON payloads, PS3.18 F.2) and calls
nubis.services.worklist, which authorizes, applies PS3.4 Annex CC and records. A refusal by
the workitem's state carries its UPS status in a Warning header (nubis.errors.WorkitemRefused),
as does a success that changed nothing (0xB304, 0xB306). Payloads are DICOM JSON only. The
event reports of the subscriptions go over the event channel, a WebSocket
(nubis.web.dicomweb.ups_events).

``GET /workitems/{workitem}/subscribers`` is nubis's own: the subscriptions recorded for a
workitem or, with a worklist's well-known UID, every one of the tenant (JSON).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from nubis.model.workitem import FILTERED_WORKLIST_UID, WORKLIST_UID, parse_data_set
from nubis.model.workitem_search import parse_search
from nubis.web.dicomweb.accept import Offer, negotiate, parse_media_type
from nubis.web.dicomweb.common import (
    accept_ranges,
    archive_of,
    check_uid,
    dicomweb_base,
    principal_of,
)

_OFFERS = (Offer("application/dicom+json", aliases=("application/json",)),)
_PAYLOAD_TYPES = ("application/dicom+json", "application/json")
MAX_PAYLOAD = 1 << 20
_WORKITEM = "/workitems/{workitem}"
_SUBSCRIBER = _WORKITEM + "/subscribers/{aetitle}"


def ups_routes() -> list[Route]:
    """The resources of PS3.18 Table 11.1-1 (under the DICOMweb root)."""
    return [
        Route("/workitems", create_workitem, methods=["POST"]),
        Route("/workitems", search_workitems, methods=["GET"]),
        Route(_WORKITEM, retrieve_workitem, methods=["GET"]),
        Route(_WORKITEM, update_workitem, methods=["POST"]),
        Route(_WORKITEM + "/state", change_state, methods=["PUT"]),
        Route(_WORKITEM + "/cancelrequest", request_cancellation, methods=["POST"]),
        Route(_WORKITEM + "/subscribers", list_subscribers, methods=["GET"]),
        Route(_SUBSCRIBER, subscribe, methods=["POST"]),
        Route(_SUBSCRIBER, unsubscribe, methods=["DELETE"]),
        Route(_SUBSCRIBER + "/suspend", suspend, methods=["POST"]),
    ]


def _workitem(request: Request) -> str:
    return check_uid(str(request.path_params["workitem"]), "the workitem UID")


async def _payload(request: Request, what: str, *, required: bool = True) -> dict[str, Any]:
    """The request's DICOM JSON data set; an empty body is ``{}`` unless ``required``."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_PAYLOAD:
            raise PayloadTooLarge(f"a workitem payload is at most {MAX_PAYLOAD} bytes")
    if not data and not required:
        return {}
    content_type = request.headers.get("content-type")
    media_type = "/".join(parse_media_type(content_type)[:2]) if content_type else ""
    if media_type not in _PAYLOAD_TYPES:
        raise UnsupportedMediaType(f"the {what} must be application/dicom+json (PS3.18 11)")
    # Off the event loop: up to a megabyte of JSON, each element read by pydicom.
    return await run_in_threadpool(_decode, bytes(data), what)


def _decode(data: bytes, what: str) -> dict[str, Any]:
    try:
        payload = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"the {what} is not JSON") from None
    return parse_data_set(payload, what)


def _answer(items: Any, request: Request) -> Response:
    choice = negotiate(accept_ranges(request), _OFFERS)
    return Response(json.dumps(items, separators=(",", ":")), media_type=choice.media_type)


def _warned(status: int, warning: str | None) -> Response:
    response = Response(status_code=status)
    if warning is not None:
        response.headers["warning"] = f'299 nubis "{warning}"'
    return response


async def create_workitem(request: Request) -> Response:
    """Create Workitem (PS3.18 11.4): 201 with the workitem's URL in Location."""
    given = request.query_params.get("workitem")
    if given is not None:
        given = check_uid(given, "the workitem UID")
    payload = await _payload(request, "workitem")
    archive, who = archive_of(request), principal_of(request)
    uid = await run_in_threadpool(archive.worklist.create, who, payload, given)
    url = f"{dicomweb_base(request)}/workitems/{uid}"
    return Response(status_code=201, headers={"location": url, "content-location": url})


async def search_workitems(request: Request) -> Response:
    """Search for Workitems (PS3.18 11.9): the matching workitems' data sets, or 204."""
    archive = archive_of(request)
    settings = archive.settings
    query = parse_search(
        list(request.query_params.multi_items()),
        max_limit=settings.qido_max_limit,
        default_limit=settings.qido_default_limit,
    )
    items, more = await run_in_threadpool(
        lambda: archive.worklist.search(principal_of(request), query, text=request.url.query)
    )
    # PS3.18 11.9.3: no match is 204 (No Content), unlike QIDO-RS's empty array here.
    response = _answer(items, request) if items else Response(status_code=204)
    for warning in query.warnings:
        response.headers.append("warning", f'299 nubis "{warning}"')
    if more:
        response.headers.append(
            "warning",
            '299 nubis "The number of results exceeded the maximum supported by the server. '
            'Additional results can be requested."',
        )
    return response


async def retrieve_workitem(request: Request) -> Response:
    """Retrieve Workitem (PS3.18 11.5): the workitem as a DICOM JSON array of one."""
    uid = _workitem(request)
    archive = archive_of(request)
    data = await run_in_threadpool(archive.worklist.retrieve, principal_of(request), uid)
    return _answer([data], request)


async def update_workitem(request: Request) -> Response:
    """Update Workitem (PS3.18 11.6): 200 once the attributes are set."""
    uid = _workitem(request)
    payload = await _payload(request, "update")
    archive = archive_of(request)
    await run_in_threadpool(archive.worklist.update, principal_of(request), uid, payload)
    return Response(status_code=200)


async def change_state(request: Request) -> Response:
    """Change Workitem State (PS3.18 11.7): claim, complete or cancel."""
    uid = _workitem(request)
    payload = await _payload(request, "state change")
    archive = archive_of(request)
    warning = await run_in_threadpool(
        archive.worklist.change_state, principal_of(request), uid, payload
    )
    return _warned(200, warning)


async def request_cancellation(request: Request) -> Response:
    """Request Cancellation (PS3.18 11.8): 202; the payload (optional) may give a reason."""
    uid = _workitem(request)
    payload = await _payload(request, "cancellation request", required=False)
    archive = archive_of(request)
    warning = await run_in_threadpool(
        archive.worklist.request_cancellation, principal_of(request), uid, payload
    )
    return _warned(202, warning)


def _deletion_lock(request: Request) -> bool:
    value = request.query_params.get("deletionlock", "false")
    if value not in ("true", "false"):
        raise BadRequest("deletionlock must be true or false (PS3.18 11.10.1.2)")
    return value == "true"


async def subscribe(request: Request) -> Response:
    """Subscribe (PS3.18 11.10): 201; the reports go to the AE's event channel
    (``/ws/subscribers/{aetitle}``), the workitem's current state first (PS3.4 CC.2.3.2)."""
    uid, ae_title = _workitem(request), str(request.path_params["aetitle"])
    lock = _deletion_lock(request)
    filter_text = request.query_params.get("filter")
    archive = archive_of(request)
    await run_in_threadpool(
        lambda: archive.worklist.subscribe(
            principal_of(request), uid, ae_title, deletion_lock=lock, filter_text=filter_text
        )
    )
    return Response(status_code=201)


async def unsubscribe(request: Request) -> Response:
    """Unsubscribe (PS3.18 11.11): 200."""
    uid, ae_title = _workitem(request), str(request.path_params["aetitle"])
    archive = archive_of(request)
    await run_in_threadpool(archive.worklist.unsubscribe, principal_of(request), uid, ae_title)
    return Response(status_code=200)


async def suspend(request: Request) -> Response:
    """Suspend Global Subscription (PS3.18 11.12): 200."""
    uid, ae_title = _workitem(request), str(request.path_params["aetitle"])
    archive = archive_of(request)
    await run_in_threadpool(archive.worklist.suspend, principal_of(request), uid, ae_title)
    return Response(status_code=200)


async def list_subscribers(request: Request) -> Response:
    """The subscriptions recorded (nubis's own resource, see the module docs)."""
    uid = _workitem(request)
    archive = archive_of(request)
    target = None if uid in (WORKLIST_UID, FILTERED_WORKLIST_UID) else uid
    found = await run_in_threadpool(archive.worklist.subscriptions, principal_of(request), target)
    return JSONResponse([s.to_dict() for s in found], headers={"cache-control": "no-store"})
