"""Every failure becomes a clear HTTP answer; internals never reach the client.

NubisError carries its own status and reason. Anything else is a bug: it is logged with a
request id, and the client gets a 500 that names only that id, so an operator can find the log
entry while nothing about the server's internals leaks (PS3.18 8.5: error payloads).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import Scope

from nubis.errors import NubisError
from nubis.web.request_ids import request_id_of

log = logging.getLogger("nubis.web")


def error_response(status: int, reason: str, dicom_status: int | None = None) -> JSONResponse:
    body: dict[str, object] = {"status": status, "reason": reason}
    if dicom_status is not None:
        body["dicomStatus"] = f"0x{dicom_status:04X}"
    return JSONResponse(body, status_code=status)


def nubis_error_response(exc: NubisError) -> JSONResponse:
    """The answer to ``exc``, with Retry-After (RFC 9110 10.2.3) when a retry may succeed: a
    503 (unavailable) or a 429 (too many requests, RFC 6585 4)."""
    response = error_response(exc.http_status, exc.reason)
    response.headers.update(exc.http_headers())
    if exc.retry_after is not None and exc.http_status in (429, 503):
        response.headers["retry-after"] = str(exc.retry_after)
    return response


def _browser_page(request: Request) -> bool:
    """Whether the failure goes to a person's browser on the web face (an HTML page), not to
    a program (JSON): a navigation there asks for text/html."""
    path = request.url.path
    return path.startswith(("/ui/", "/share/")) and "text/html" in request.headers.get("accept", "")


def _page(request: Request, status: int, reason: str, headers: dict[str, str]) -> Response:
    # Imported here: the web face's pages import the auth middleware, which imports this.
    from nubis.web.ui.render import error_page

    response = error_page(request, status, reason)
    response.headers.update(headers)
    return response


async def nubis_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, NubisError)
    if exc.http_status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.reason)
    response = nubis_error_response(exc)
    if _browser_page(request):
        kept = {k: v for k, v in response.headers.items() if k in ("retry-after", "allow")}
        return _page(request, exc.http_status, exc.reason, kept)
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reason = exc.detail if exc.status_code != 404 else f"no resource at {request.url.path}"
    if exc.status_code != 405:
        if _browser_page(request):
            return _page(request, exc.status_code, reason, {})
        return error_response(exc.status_code, reason)
    # RFC 9110 15.5.6: a 405 carries Allow, every method of the target resource. Starlette's
    # names only those of the first route matching the path; /studies has two (GET, POST).
    # Routing has moved root_path into the mount that matched: match from the top again.
    scope = request.scope
    top = {**scope, "root_path": scope.get("app_root_path", scope.get("root_path", ""))}
    allowed = ", ".join(sorted(_allowed_methods(request.app.router.routes, top)))
    response = error_response(405, f"{request.method} is not allowed here; use {allowed}")
    response.headers["allow"] = allowed
    return response


def _allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    methods: set[str] = set()
    for route in routes:
        match, child_scope = route.matches(scope)
        if match is Match.NONE:
            continue
        if isinstance(route, Mount):
            methods |= _allowed_methods(route.routes, {**scope, **child_scope})
        elif isinstance(route, Route) and route.methods:
            methods |= route.methods
    return methods


async def unexpected_error(request: Request, exc: Exception) -> Response:
    request_id = request_id_of(request.scope)
    log.exception("request %s (%s %s) failed", request_id, request.method, request.url.path)
    return error_response(500, f"internal error; the server log has request id {request_id}")
