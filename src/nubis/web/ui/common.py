"""What every page of the web face shares: who is signed in, forms with their CSRF token,
the session cookie.

Pages never decide what a user may do: they call the same services as DICOMweb with the
request's principal, and the Guard decides and records. A page only needs to know that
someone is signed in (:func:`signed_in`), or it sends the browser to the sign-in page.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from nubis.archive import Archive
from nubis.errors import BadRequest, Forbidden, PayloadTooLarge
from nubis.security.policy import Principal
from nubis.security.sessions import Session
from nubis.web.auth import SECURE_SESSION_COOKIE, SESSION_COOKIE

CSRF_FIELD = "csrf_token"
# Forms of the web face are small (names, notes, a PIN); uploads go through STOW-RS.
_MAX_FORM_FIELDS = 64
_MAX_FORM_BYTES = 64 << 10


class SignInRequired(Exception):
    """No session: the browser is sent to the sign-in page, then back to ``next_path``."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def archive_of(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def signed_in(request: Request) -> Principal:
    """The request's principal; SignInRequired (a redirect) when nobody is signed in."""
    principal = request.scope.get("nubis.principal")
    if not isinstance(principal, Principal):
        path = request.url.path
        if request.url.query:
            path += "?" + request.url.query
        raise SignInRequired(path)
    return principal


def session_of(request: Request) -> Session | None:
    session = request.scope.get("nubis.session")
    return session if isinstance(session, Session) else None


async def ui_form(request: Request) -> FormData:
    """The submitted form of a signed-in page, refused (403) unless it carries the session's
    CSRF token: the one way pages read forms, so no state-changing form goes unchecked."""
    signed_in(request)
    form = await bounded_form(request)
    session = session_of(request)
    token = form.get(CSRF_FIELD)
    if session is not None and not session.csrf_matches(token if isinstance(token, str) else None):
        raise Forbidden("the form's CSRF token is missing or stale: reload the page and retry")
    return form


async def bounded_form(request: Request) -> FormData:
    """The request's form, at most 64 KiB (413 beyond, before it is read) and 64 fields."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) > _MAX_FORM_BYTES:
        raise PayloadTooLarge(f"a form is at most {_MAX_FORM_BYTES} bytes, with Content-Length")
    return await request.form(
        max_files=0, max_fields=_MAX_FORM_FIELDS, max_part_size=_MAX_FORM_BYTES
    )


def field(form: FormData, name: str, *, max_length: int = 256, required: bool = True) -> str:
    """A text field of ``form``, stripped; 400 naming it when missing or too long."""
    value = form.get(name)
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise BadRequest(f"{name} is required")
    if len(text) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters")
    return text


def safe_next(value: Any, default: str = "/ui/") -> str:
    """A path on this site to go to after signing in: never another site (an open redirect
    would turn the sign-in page into a phishing relay)."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or not all(c.isprintable() for c in value):
        return default
    return value


def sign_in_redirect(next_path: str) -> RedirectResponse:
    return RedirectResponse(f"/ui/login?next={quote(safe_next(next_path), safe='/')}", 303)


def secure(request: Request) -> bool:
    """Whether the browser reached us over TLS (directly, or through a trusted proxy)."""
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, token: str, *, max_age: int) -> None:
    name = SECURE_SESSION_COOKIE if secure(request) else SESSION_COOKIE
    response.set_cookie(
        name,
        token,
        max_age=max_age,
        path="/",
        secure=secure(request),
        httponly=True,
        samesite="strict",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    for name in (SESSION_COOKIE, SECURE_SESSION_COOKIE):
        response.delete_cookie(
            name,
            path="/",
            secure=name == SECURE_SESSION_COOKIE or secure(request),
            httponly=True,
            samesite="strict",
        )


__all__ = [
    "CSRF_FIELD",
    "SignInRequired",
    "archive_of",
    "bounded_form",
    "clear_session_cookie",
    "field",
    "safe_next",
    "secure",
    "session_of",
    "set_session_cookie",
    "sign_in_redirect",
    "signed_in",
    "ui_form",
]
