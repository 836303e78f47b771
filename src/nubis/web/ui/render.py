"""Templates of the web face: one Jinja2 environment, autoescaping every value.

Every DICOM text a page shows (a PatientName of ``<script>...``) goes through Jinja2's HTML
escaping; templates never mark values safe. Pages carry no inline script or style, so the
Content-Security-Policy (web/ui/headers.py) can forbid both.
"""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from nubis import __version__
from nubis.security.policy import Action, AuthPolicy, Principal

_env = Environment(
    loader=PackageLoader("nubis.web.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals["version"] = __version__
_POLICY = AuthPolicy()


def may(principal: object, action: str) -> bool:
    """Whether ``principal``'s roles allow ``action`` ("read", "write", "delete", "admin"...):
    what a page offers. It decides nothing: the services decide again when it is done."""
    if not isinstance(principal, Principal):
        return False
    return _POLICY.decide(principal, Action[action.upper()]).allowed


_env.globals["may"] = may


def page(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """``template`` rendered for ``request``: the signed-in principal and the session's CSRF
    token are always in the context (``principal``, ``csrf_token``), None when signed out."""
    session = request.scope.get("nubis.session")
    values = {
        "request": request,
        "principal": request.scope.get("nubis.principal"),
        "csrf_token": session.csrf_token if session is not None else None,
        # OHIF at /ohif/ when viewer_ohif_dir is set (web/ui/ohif.py): a link in the top bar.
        "ohif": bool(request.app.state.archive.settings.viewer_ohif_dir),
        **(context or {}),
    }
    body = _env.get_template(template).render(values)
    return HTMLResponse(body, status_code=status_code, headers=headers)


def error_page(request: Request, status: int, reason: str) -> HTMLResponse:
    """A failure as a page, for browsers on the web face's paths."""
    return page(request, "error.html", {"status": status, "reason": reason}, status_code=status)


__all__ = ["error_page", "may", "page"]
