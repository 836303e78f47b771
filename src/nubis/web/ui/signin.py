"""Signing in and out of the web face with a user name and password.

The password goes through the same check as HTTP Basic (``Authenticator.login``): the same
argon2 verification, the same login throttle per user name and per address (429 while locked,
before any password is checked), the same audit records (User Authentication, success or minor
failure; a lockout's start is a Security Alert). A success starts a server-side session
(nubis.security.sessions) whose cookie is HttpOnly, SameSite=Strict, Secure (and __Host-)
on TLS.

The sign-in form is protected against login CSRF (another site signing the browser in as the
attacker) with a double-submitted token: a random value in a SameSite=Strict cookie that must
come back in the form.
"""

from __future__ import annotations

import hmac
import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from nubis.errors import Forbidden, TooManyRequests, Unauthorized
from nubis.model.audit import EventOutcome
from nubis.security import audit_events
from nubis.security.policy import Principal
from nubis.web.request_ids import request_id_of
from nubis.web.ui.common import (
    archive_of,
    bounded_form,
    clear_session_cookie,
    field,
    safe_next,
    secure,
    session_of,
    set_session_cookie,
    signed_in,
    ui_form,
)
from nubis.web.ui.oidc import provider_host
from nubis.web.ui.render import page

_LOGIN_CSRF_COOKIE = "nubis_login_csrf"


class _Caller:
    """A caller not yet authenticated, as the audit builders read principals."""

    def __init__(self, user_id: str, peer: str | None) -> None:
        self.user_id = user_id
        self.peer = peer


def _peer(request: Request) -> str | None:
    return request.client.host if request.client else None


def _login_page(
    request: Request,
    *,
    next_path: str,
    error: str | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> Response:
    token = secrets.token_urlsafe(24)
    response = page(
        request,
        "login.html",
        {
            "next_path": next_path,
            "login_csrf": token,
            "error": error,
            "oidc_host": provider_host(archive_of(request).settings),
        },
        status_code=status_code,
        headers=headers,
    )
    response.set_cookie(
        _LOGIN_CSRF_COOKIE,
        token,
        path="/ui/login",
        secure=secure(request),
        httponly=True,
        samesite="strict",
    )
    return response


async def login_form(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if request.scope.get("nubis.principal") is not None:
        return RedirectResponse(next_path, 303)
    return _login_page(request, next_path=next_path)


async def login_submit(request: Request) -> Response:
    archive = archive_of(request)
    form = await bounded_form(request)
    next_path = safe_next(form.get("next"))
    cookie = request.cookies.get(_LOGIN_CSRF_COOKIE, "")
    presented = form.get("login_csrf")
    if not cookie or not isinstance(presented, str) or not hmac.compare_digest(cookie, presented):
        raise Forbidden("the sign-in form expired or came from another site: reload it")
    name = field(form, "username", max_length=128)
    password = field(form, "password", max_length=1024)
    peer = _peer(request)

    def check() -> Principal:
        try:
            return archive.authn.login(name, password, peer=peer, front_door="web")
        except Unauthorized as exc:
            archive.guard.record(
                audit_events.user_authentication(
                    _Caller(name, peer),
                    outcome=EventOutcome.MINOR_FAILURE,
                    front_door="web",
                    description=exc.reason,
                )
            )
            raise

    try:
        principal = await run_in_threadpool(check)
    except Unauthorized as exc:
        return _login_page(request, next_path=next_path, error=exc.reason, status_code=401)
    except TooManyRequests as exc:
        retry = {"retry-after": str(exc.retry_after)} if exc.retry_after else None
        return _login_page(
            request, next_path=next_path, error=exc.reason, status_code=429, headers=retry
        )

    def start() -> str:
        who = principal.with_request(peer=peer, request_id=request_id_of(request.scope))
        token, _ = archive.sessions.start(who, auth_method="password", peer=peer)
        archive.guard.record(
            audit_events.user_authentication(who, front_door="web", request_id=who.request_id)
        )
        return token

    token = await run_in_threadpool(start)
    response = RedirectResponse(next_path, 303)
    set_session_cookie(response, request, token, max_age=archive.settings.session_max_hours * 3600)
    response.delete_cookie(_LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


async def logout(request: Request) -> Response:
    principal = signed_in(request)
    await ui_form(request)
    archive = archive_of(request)
    session = session_of(request)

    def end() -> None:
        if session is not None:
            archive.sessions.end(session.token_hash)
        archive.guard.record(
            audit_events.user_authentication(
                principal, logout=True, front_door="web", request_id=principal.request_id
            )
        )

    await run_in_threadpool(end)
    response = RedirectResponse("/ui/login", 303)
    clear_session_cookie(response, request)
    return response


def routes() -> list[Route]:
    return [
        Route("/ui/login", login_form, methods=["GET"]),
        Route("/ui/login", login_submit, methods=["POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
    ]


__all__ = ["routes"]
