"""Each HTTP request's id: in every log line of the request (nubis.logs.request_id), in its
audit records (the principal carries it to the services), and in the ``X-Request-ID`` header
of the response, so a user's complaint, the server log and the audit trail meet.

An ``X-Request-ID`` sent by the client (a proxy or a gateway tracing a call through several
services) is kept when it is a hexadecimal id or a UUID of 8 to 64 characters: the id goes into
log lines and audit records, so a free text there could carry a patient's name. Anything else
is replaced by an id of the archive's own, which the response returns.
"""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nubis.logs import request_id

HEADER = "x-request-id"
SCOPE_KEY = "nubis.request_id"
_SAFE = re.compile(r"[0-9A-Fa-f][0-9A-Fa-f-]{6,62}[0-9A-Fa-f]")


def safe_request_id(text: str | None) -> str | None:
    """``text`` when it may serve as a request id (see the module docs), else None."""
    if text is None or not _SAFE.fullmatch(text):
        return None
    return text


class RequestIdMiddleware:
    """Give each HTTP request its id (outermost: every layer below logs with it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = next((v for k, v in scope.get("headers", []) if k == HEADER.encode()), None)
        rid = safe_request_id(sent.decode("latin-1") if sent is not None else None)
        rid = rid or secrets.token_hex(8)
        scope[SCOPE_KEY] = rid
        token = request_id.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = rid
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


def request_id_of(scope: Scope) -> str:
    """The id :class:`RequestIdMiddleware` gave this request (a fresh one without it)."""
    rid = scope.get(SCOPE_KEY)
    return rid if isinstance(rid, str) else secrets.token_hex(8)


__all__ = ["HEADER", "SCOPE_KEY", "RequestIdMiddleware", "request_id_of", "safe_request_id"]
