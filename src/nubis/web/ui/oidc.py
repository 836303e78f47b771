"""Signing in to the web face with the OpenID Connect provider (``oidc_issuer``): the
authorization-code flow with PKCE (RFC 7636, S256), ``state`` and ``nonce``.

``GET /ui/login/oidc?next=PATH`` sends the browser to the provider's authorization endpoint; the
provider sends it back to ``GET /ui/oidc/callback`` with a code, which the archive exchanges at
the token endpoint (with the PKCE verifier, and the client secret when there is one). The ID
token is checked by the same :class:`~nubis.security.authn.OidcVerifier` as API bearer tokens
(signature from the provider's JWKS, issuer, expiry; audience: the client id) and its ``nonce``
against the one this browser was given. The session then gets exactly the principal an API
caller with that provider's token would be: roles and tenant mapped from the ID token's claims,
or from the access token's (``oidc_browser_token = access_token``, audience ``oidc_audience``).

What the flow needs between the two requests (state, nonce, PKCE verifier, where to go next)
is kept in the browser, in a cookie that lives 10 minutes, ``HttpOnly``, ``SameSite=Lax`` (the
callback is a cross-site navigation from the provider: a Strict cookie would not come back),
named ``__Host-`` on TLS so no other site can plant one. It is not signed: it holds only random
values this browser was given, a copy of someone else's would not help them (the provider's
code is bound to that verifier, the state to that cookie), and a signature would not stop a
planted copy of an attacker's own valid cookie either; the __Host- prefix does. No table, and
any node can finish a flow another node started.

The session cookie is SameSite=Strict, and the callback's response is the end of a redirect
chain that started on the provider's site: a browser does not send a Strict cookie on a
redirect of that chain. So the callback answers a small page (200) whose script, or its link,
goes on to the page asked for: a same-site navigation, which carries the new cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from nubis.config import Settings
from nubis.errors import BadRequest, NotFound, NubisError, Unauthorized
from nubis.model.audit import EventOutcome
from nubis.security import audit_events
from nubis.security.authn import OidcVerifier
from nubis.security.policy import Principal
from nubis.web.request_ids import request_id_of
from nubis.web.ui.common import archive_of, safe_next, secure, set_session_cookie
from nubis.web.ui.render import page
from nubis.web.urls import site_url

log = logging.getLogger("nubis.web")

PENDING_COOKIE = "nubis_oidc"
SECURE_PENDING_COOKIE = "__Host-nubis_oidc"
CALLBACK_PATH = "/ui/oidc/callback"
_PENDING_SECONDS = 600
_HTTP_TIMEOUT_SECONDS = 10
_MAX_RESPONSE_BYTES = 1 << 20


class IdentityProviderUnavailable(NubisError):
    """The OIDC provider cannot be reached or answers nonsense; a later try may work."""

    http_status = 503
    retry_after = 30


@dataclass(frozen=True)
class Endpoints:
    authorization: str
    token: str


class OidcClient:
    """This archive as a client of the provider (one per process; discovery is lazy and kept)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = OidcVerifier.from_settings(settings)
        self._endpoints: Endpoints | None = None
        self._lock = threading.Lock()

    @property
    def provider_host(self) -> str:
        return urllib.parse.urlsplit(self.settings.oidc_issuer).netloc

    def endpoints(self) -> Endpoints:
        with self._lock:
            if self._endpoints is None:
                url = self.settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration"
                document = _get_json(url)
                authorization = document.get("authorization_endpoint")
                token = document.get("token_endpoint")
                if not isinstance(authorization, str) or not isinstance(token, str):
                    raise IdentityProviderUnavailable(
                        "the identity provider's discovery document names no authorization or "
                        "token endpoint"
                    )
                self._endpoints = Endpoints(authorization, token)
            return self._endpoints

    def exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        """The token endpoint's answer for ``code`` (RFC 6749 4.1.3, RFC 7636 4.5)."""
        settings = self.settings
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": settings.oidc_client_id,
        }
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "accept": "application/json",
        }
        if settings.oidc_client_secret:  # client_secret_basic (RFC 6749 2.3.1)
            client_id, secret = settings.oidc_client_id, settings.oidc_client_secret
            pair = f"{_form_quote(client_id)}:{_form_quote(secret)}"
            headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        request = urllib.request.Request(
            self.endpoints().token,
            data=urllib.parse.urlencode(form).encode(),
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=_HTTP_TIMEOUT_SECONDS) as response:
                answer = json.loads(response.read(_MAX_RESPONSE_BYTES))
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read(4096)).get("error", "")
            except (ValueError, AttributeError):
                error = ""
            raise Unauthorized(
                f"the identity provider refused the sign-in ({exc.code} {error})".strip()
            ) from None
        except (OSError, ValueError) as exc:
            log.error("OIDC token endpoint unavailable: %s", exc)
            raise IdentityProviderUnavailable("the identity provider cannot be reached") from None
        if not isinstance(answer, dict):
            raise Unauthorized("the identity provider's token answer is not a JSON object")
        return answer


def _form_quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_SECONDS) as response:
            document = json.loads(response.read(_MAX_RESPONSE_BYTES))
    except (OSError, ValueError) as exc:
        log.error("OIDC discovery failed: %s", exc)
        raise IdentityProviderUnavailable("the identity provider cannot be reached") from None
    if not isinstance(document, dict):
        raise IdentityProviderUnavailable("the provider's discovery document is not an object")
    return document


def client_of(request: Request) -> OidcClient:
    """The OIDC client of this process; 404 when browser sign-in with OIDC is not set up."""
    settings = archive_of(request).settings
    if not (settings.oidc_issuer and settings.oidc_client_id):
        raise NotFound("sign-in with an identity provider is not set up (oidc_client_id)")
    client: OidcClient | None = getattr(request.app.state, "oidc_client", None)
    if client is None:
        client = OidcClient(settings)
        request.app.state.oidc_client = client
    return client


def provider_host(settings: Settings) -> str | None:
    """What the sign-in page's button names, when OIDC browser sign-in is set up."""
    if settings.oidc_issuer and settings.oidc_client_id:
        return urllib.parse.urlsplit(settings.oidc_issuer).netloc
    return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _pending_cookie_name(request: Request) -> str:
    return SECURE_PENDING_COOKIE if secure(request) else PENDING_COOKIE


def _redirect_uri(request: Request) -> str:
    return site_url(request) + CALLBACK_PATH


async def start(request: Request) -> Response:
    """``GET /ui/login/oidc``: off to the provider, with state, nonce and a PKCE challenge."""
    client = client_of(request)
    endpoints = await run_in_threadpool(client.endpoints)
    verifier = secrets.token_urlsafe(48)  # 64 characters (RFC 7636 4.1: 43-128)
    pending = {
        "state": secrets.token_urlsafe(32),
        "nonce": secrets.token_urlsafe(32),
        "verifier": verifier,
        "next": safe_next(request.query_params.get("next")),
        "until": int(time.time()) + _PENDING_SECONDS,
    }
    challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
    scopes = ["openid", *(s for s in client.settings.oidc_scopes.split() if s != "openid")]
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": client.settings.oidc_client_id,
            "redirect_uri": _redirect_uri(request),
            "scope": " ".join(scopes),
            "state": pending["state"],
            "nonce": pending["nonce"],
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
    )
    separator = "&" if "?" in endpoints.authorization else "?"
    response = RedirectResponse(f"{endpoints.authorization}{separator}{query}", 303)
    response.set_cookie(
        _pending_cookie_name(request),
        _b64url(json.dumps(pending).encode()),
        max_age=_PENDING_SECONDS,
        path="/",
        secure=secure(request),
        httponly=True,
        samesite="lax",
    )
    return response


def _pending(request: Request) -> dict[str, Any]:
    raw = request.cookies.get(_pending_cookie_name(request), "")
    try:
        pending = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, UnicodeDecodeError):
        pending = None
    if not isinstance(pending, dict) or not all(
        isinstance(pending.get(k), str) for k in ("state", "nonce", "verifier", "next")
    ):
        raise BadRequest("no sign-in was started in this browser, or it expired: sign in again")
    until = pending.get("until")
    if not isinstance(until, int) or until < time.time():
        raise BadRequest("the sign-in took too long: sign in again")
    return pending


async def callback(request: Request) -> Response:
    """``GET /ui/oidc/callback``: check state, exchange the code, validate, start a session."""
    client = client_of(request)
    archive = archive_of(request)
    peer = request.client.host if request.client else None
    params = request.query_params
    if params.get("error"):
        reason = f"the identity provider did not sign you in: {params['error'][:64]}"
        return _failed(request, Unauthorized(reason), peer)
    pending = _pending(request)
    state = params.get("state", "")
    if not hmac.compare_digest(state.encode(), pending["state"].encode()):
        raise BadRequest("the sign-in answer does not belong to this browser's sign-in")
    code = params.get("code", "")
    if not code or len(code) > 4096:
        raise BadRequest("the identity provider sent no authorization code")

    def sign_in() -> tuple[str, Principal]:
        answer = client.exchange(code, pending["verifier"], _redirect_uri(request))
        principal = _principal(client, answer, pending["nonce"])
        who = principal.with_request(peer=peer, request_id=request_id_of(request.scope))
        token, _ = archive.sessions.start(who, auth_method="oidc", peer=peer)
        archive.guard.record(
            audit_events.user_authentication(who, front_door="web", request_id=who.request_id)
        )
        return token, who

    try:
        token, _ = await run_in_threadpool(sign_in)
    except Unauthorized as exc:
        return _failed(request, exc, peer)
    response = page(request, "oidc_continue.html", {"next_path": pending["next"]})
    set_session_cookie(response, request, token, max_age=archive.settings.session_max_hours * 3600)
    response.delete_cookie(
        _pending_cookie_name(request), path="/", secure=secure(request), httponly=True
    )
    return response


def _principal(client: OidcClient, answer: dict[str, Any], nonce: str) -> Principal:
    verifier = client.verifier
    assert verifier is not None  # client_of: oidc_issuer is set
    id_token = answer.get("id_token")
    if not isinstance(id_token, str):
        raise Unauthorized("the identity provider sent no ID token")
    claims = verifier.claims(id_token, audience=client.settings.oidc_client_id)
    if not hmac.compare_digest(str(claims.get("nonce", "")).encode(), nonce.encode()):
        raise Unauthorized("the ID token was not issued for this sign-in (nonce)")
    if client.settings.oidc_browser_token == "id_token":
        return verifier.principal(claims)
    access_token = answer.get("access_token")
    if not isinstance(access_token, str):
        raise Unauthorized("the identity provider sent no access token")
    principal = verifier.verify(access_token)
    if principal.id != f"oidc:{claims['sub']}":
        raise Unauthorized("the access token and the ID token name different subjects")
    return principal


def _failed(request: Request, exc: Unauthorized, peer: str | None) -> Response:
    archive = archive_of(request)
    archive.guard.record(
        audit_events.user_authentication(
            _Caller("oidc", peer),
            outcome=EventOutcome.MINOR_FAILURE,
            front_door="web",
            description=exc.reason,
        )
    )
    return page(request, "error.html", {"status": 401, "reason": exc.reason}, status_code=401)


class _Caller:
    """A caller not yet authenticated, as the audit builders read principals."""

    def __init__(self, user_id: str, peer: str | None) -> None:
        self.user_id = user_id
        self.peer = peer


def routes() -> list[Route]:
    return [
        Route("/ui/login/oidc", start, methods=["GET"]),
        Route(CALLBACK_PATH, callback, methods=["GET"]),
    ]


__all__ = ["CALLBACK_PATH", "PENDING_COOKIE", "OidcClient", "provider_host", "routes"]
