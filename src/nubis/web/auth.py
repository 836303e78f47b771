"""Authentication at the HTTP door, and the login and whoami endpoints.

:class:`AuthMiddleware` authenticates every request except the health probes
(:data:`PUBLIC_PATHS`) and puts the :class:`~nubis.security.policy.Principal` in the ASGI scope,
where routes pick it up with ``principal_of`` and hand it to the services, which authorize.
The middleware decides nothing else: who may do what is the services' business, so DIMSE and
the CLI obey the same rules.

Programs send credentials in ``Authorization`` or ``X-API-Key``; browsers send the web face's
session cookie (nubis.security.sessions), which counts only when no credentials header is
present. A cookie-authenticated request that may change something (any method but GET, HEAD
and OPTIONS) must also carry the session's CSRF token, in ``X-CSRF-Token`` (scripts) or, for
the web face's own forms, in the form (checked by ``web/ui``), or it is refused with 403.

A request without credentials is answered 401 with a challenge for Basic and Bearer, except
under the web face's prefixes (:data:`BROWSER_PREFIXES`), whose pages send a browser to the
sign-in page instead. Failed attempts with credentials are recorded (User Authentication,
minor failure); requests with no credentials at all are not, or every browser probe would
write to the audit trail.

A WebSocket handshake (the UPS event channel) is authenticated by the same credentials
headers; without valid ones it is refused (closed before it is accepted: HTTP 403 to the
client). A session cookie does not count there: browsers send cookies with a WebSocket
handshake from any site, and no CORS check stands in the way (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from nubis.archive import Archive
from nubis.errors import Forbidden, NubisError, Unauthorized
from nubis.model.audit import EventOutcome
from nubis.security import audit_events
from nubis.security.authn import anonymous_admin
from nubis.security.policy import Principal
from nubis.web.errors import error_response, nubis_error_response
from nubis.web.request_ids import request_id_of

PUBLIC_PATHS = frozenset({"/-/health", "/-/ready"})
# Paths a browser navigates to: without a session they reach their route with no principal,
# which answers a sign-in page, a redirect to it, or a share link's own page.
BROWSER_PREFIXES = ("/ui/", "/share/", "/ohif/")
BROWSER_PATHS = frozenset({"/", "/ui", "/ohif"})
CHALLENGE = 'Basic realm="nubis", charset="UTF-8", Bearer realm="nubis"'
# To a request that came with a session cookie only (a page's script: OHIF, the viewer) whose
# session has ended: no Basic, or the browser would pop up its password dialog for each
# request of the page; the page sends the user to sign in again.
SESSION_CHALLENGE = 'Bearer realm="nubis"'
SESSION_COOKIE = "nubis_session"
# On HTTPS the cookie is named with the __Host- prefix: browsers then accept it only with
# Secure, Path=/ and no Domain, so no other site (a sibling subdomain) can plant or shadow it.
SECURE_SESSION_COOKIE = "__Host-nubis_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class AuthMiddleware:
    """Authenticate each HTTP request (see the module docs)."""

    def __init__(self, app: ASGIApp, archive: Archive) -> None:
        self.app = app
        self.archive = archive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        path = scope["path"] if scope["type"] == "http" else ""
        if scope["type"] != "http" or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        client = scope.get("client")
        peer = str(client[0]) if client else None
        request_id = request_id_of(scope)
        browser = path in BROWSER_PATHS or path.startswith(BROWSER_PREFIXES)
        via = "web" if browser else "dicomweb"
        token = _session_token(headers.get("cookie", ""))
        # A session counts only when no other credentials are given and auth is on.
        if _credentials(headers) or not self.archive.settings.auth:
            token = None
        by_session = bool(token)
        try:
            if token:
                principal = await run_in_threadpool(
                    self._session_principal, scope, token, headers, browser
                )
            else:
                # A key checked since the last credential change: no thread hop, no database.
                cached = self.archive.authn.cached(headers) if self.archive.settings.auth else None
                if cached is not None:
                    principal = cached
                else:
                    principal = await run_in_threadpool(
                        self._authenticate, headers, peer, request_id
                    )
        except Unauthorized as exc:
            if browser:
                await self.app(scope, receive, send)  # the route answers with a sign-in page
                return
            response = error_response(401, exc.reason)
            response.headers["www-authenticate"] = SESSION_CHALLENGE if by_session else CHALLENGE
            await response(scope, receive, send)
            return
        except NubisError as exc:  # Forbidden, TooManyRequests (429, Retry-After), or 503
            await nubis_error_response(exc)(scope, receive, send)
            return
        scope["nubis.principal"] = replace(principal, via=via, peer=peer, request_id=request_id)
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        client = scope.get("client")
        peer = str(client[0]) if client else None
        request_id = request_id_of(scope)
        try:
            cached = self.archive.authn.cached(headers) if self.archive.settings.auth else None
            if cached is not None:
                principal = cached
            else:
                principal = await run_in_threadpool(self._authenticate, headers, peer, request_id)
        except NubisError:
            await receive()  # the websocket.connect message, answered by the refusal
            await send({"type": "websocket.close", "code": 1008})
            return
        scope["nubis.principal"] = replace(
            principal, via="dicomweb", peer=peer, request_id=request_id
        )
        await self.app(scope, receive, send)

    def _session_principal(
        self, scope: Scope, token: str, headers: dict[str, str], browser: bool
    ) -> Principal:
        session = self.archive.sessions.find(token)
        if session is None:
            raise Unauthorized("the session has ended: sign in again")
        principal = self.archive.authn.session_principal(session, headers)
        scope["nubis.session"] = session
        csrf = headers.get(CSRF_HEADER)
        # The web face's own forms carry the token in their body: its routes check those.
        if scope["method"] not in SAFE_METHODS and not browser and not session.csrf_matches(csrf):
            raise Forbidden(
                "a request signed in by a browser session must carry the session's CSRF token "
                "in X-CSRF-Token"
            )
        return principal

    def _authenticate(
        self, headers: dict[str, str], peer: str | None, request_id: str
    ) -> Principal:
        archive = self.archive
        if not archive.settings.auth:
            return anonymous_admin()
        try:
            return archive.authn.authenticate(headers, peer=peer)
        except Unauthorized as exc:
            if headers.get("authorization") or headers.get("x-api-key"):
                claimed = _claimed_user(headers.get("authorization", ""))
                archive.guard.record(
                    audit_events.user_authentication(
                        _Caller(claimed, peer),
                        outcome=EventOutcome.MINOR_FAILURE,
                        front_door="dicomweb",
                        request_id=request_id,
                        description=exc.reason,
                    )
                )
            raise


def _credentials(headers: dict[str, str]) -> bool:
    return bool(headers.get("authorization") or headers.get("x-api-key"))


def _session_token(cookie_header: str) -> str | None:
    """The session token of a Cookie header, the __Host- cookie first."""
    if SESSION_COOKIE not in cookie_header:
        return None
    cookies: dict[str, str] = {}
    for pair in cookie_header.split(";"):
        name, _, value = pair.strip().partition("=")
        cookies.setdefault(name, value)
    return cookies.get(SECURE_SESSION_COOKIE) or cookies.get(SESSION_COOKIE) or None


class _Caller:
    """An unauthenticated caller, as the audit builders read principals."""

    def __init__(self, user_id: str, peer: str | None) -> None:
        self.user_id = user_id
        self.peer = peer


def _claimed_user(authorization: str) -> str:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic":
        return "unknown (token)"
    try:
        name = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return "unknown"
    return name[:128] or "unknown"


def _principal(request: Request) -> Principal:
    principal = request.scope.get("nubis.principal")
    if not isinstance(principal, Principal):
        raise Unauthorized("authentication required")
    return principal


async def login(request: Request) -> Response:
    """``POST /-/login`` with HTTP Basic (user name and password): a new API key, shown once.

    The key lasts ``api_key_days``. Only a password login issues keys, so a leaked key cannot
    renew itself. 403 for credentials that are not a local user's password.
    """
    archive: Archive = request.app.state.archive
    principal = _principal(request)
    if principal.auth_method != "basic":
        raise Forbidden("POST /-/login takes a user name and password (HTTP Basic)")
    days = archive.settings.api_key_days or None

    def issue() -> dict[str, Any]:
        key, secret = archive.users.create_api_key(
            principal.id, label=f"login from {principal.peer or '?'}", expires_in_days=days
        )
        archive.guard.record(
            audit_events.user_authentication(
                principal, front_door="dicomweb", request_id=principal.request_id
            )
        )
        return {
            "api_key": secret,
            "key_id": key.id,
            "user": principal.id,
            "tenant": principal.tenant,
            "roles": sorted(principal.roles),
            "expires_at": key.expires_at,
        }

    return JSONResponse(await run_in_threadpool(issue), headers={"cache-control": "no-store"})


async def whoami(request: Request) -> Response:
    """``GET /-/whoami``: the caller as the archive sees it (for clients and operators)."""
    principal = _principal(request)
    return JSONResponse(
        {
            "id": principal.id,
            "tenant": principal.tenant,
            "roles": sorted(principal.roles),
            "auth_method": principal.auth_method,
        }
    )


__all__ = [
    "BROWSER_PATHS",
    "BROWSER_PREFIXES",
    "CHALLENGE",
    "CSRF_HEADER",
    "PUBLIC_PATHS",
    "SECURE_SESSION_COOKIE",
    "SESSION_COOKIE",
    "AuthMiddleware",
    "login",
    "whoami",
]
