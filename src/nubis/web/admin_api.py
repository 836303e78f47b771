"""What the archive's JSON admin routes share (corrections, quarantine): the caller, once the
policy let it administer its tenant, and the request's JSON body.

The ADMIN action is decided before the body or the parameters are looked at, so a refusal
(403, recorded as Use of Restricted Function) says nothing about them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from starlette.requests import Request

from nubis.archive import Archive
from nubis.errors import BadRequest, PayloadTooLarge
from nubis.security.policy import Action, Principal
from nubis.web.dicomweb.common import principal_of

MAX_BODY = 64 << 10
NO_STORE = {"cache-control": "no-store"}


def admin_caller(request: Request, what: str) -> tuple[Archive, Principal]:
    """The archive and the caller, once the policy let the caller administer its tenant
    (``what`` names the attempt in a refusal's record)."""
    archive: Archive = request.app.state.archive
    # Not a DICOMweb request: records say it came through the archive's own web API.
    who = replace(principal_of(request), via="web")
    archive.guard.authorize(who, Action.ADMIN, what)
    return archive, who


async def json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object (empty: ``{}``); 413 past MAX_BODY, 400 when not one."""
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY:
            raise PayloadTooLarge(f"a request body here is at most {MAX_BODY} bytes")
    try:
        body = json.loads(data or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def required_text(body: dict[str, Any], name: str) -> str:
    """``body[name]``, a non-empty string; 400 naming it otherwise."""
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name!r} is required (a non-empty string)")
    return value
