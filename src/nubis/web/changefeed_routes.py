"""The change feed over HTTP (nubis.services.changefeed; docs/events.md).

``GET /changefeed?since=<sequence>&limit=<n>`` lists, in commit order, the entries after
``since`` (default 0: from the start) that the caller may see, at most ``limit`` (default 100,
at most 1000); the next page starts after the last Sequence listed. ``GET /changefeed/latest``
is the newest such entry (``{"Sequence": 0}`` while there is none), where a new client starts.
Entries are JSON objects in the shape of the Azure DICOM service's change feed (see
``entry_json``). A cursor that is not a whole number, or an unknown parameter, is 400 naming
it; a cursor older than the retention period is 410.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.archive import Archive
from nubis.errors import BadRequest
from nubis.services.changefeed import entry_json
from nubis.web.admin_api import NO_STORE
from nubis.web.dicomweb.common import principal_of

DEFAULT_LIMIT = 100


def changefeed_routes() -> list[Route]:
    return [
        Route("/changefeed", changefeed, methods=["GET"]),
        Route("/changefeed/latest", latest, methods=["GET"]),
    ]


def _whole_number(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise BadRequest(f"{name} must be a whole number (a Sequence of the change feed)")
    return int(text)


def _only(request: Request, *allowed: str) -> None:
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown parameter(s) {', '.join(unknown)}; the change feed takes "
            f"{', '.join(allowed) or 'none'}"
        )


async def changefeed(request: Request) -> Response:
    _only(request, "since", "limit")
    since = _whole_number(request, "since", 0)
    limit = _whole_number(request, "limit", DEFAULT_LIMIT)
    archive: Archive = request.app.state.archive
    who = principal_of(request)
    entries = await run_in_threadpool(archive.changefeed.page, who, since, limit)
    return JSONResponse([entry_json(e) for e in entries], headers=NO_STORE)


async def latest(request: Request) -> Response:
    _only(request)
    archive: Archive = request.app.state.archive
    entry = await run_in_threadpool(archive.changefeed.latest, principal_of(request))
    return JSONResponse({"Sequence": 0} if entry is None else entry_json(entry), headers=NO_STORE)
