"""What the admin pages share: their frame (tabs for what the principal may do), form fields,
notices after a change, and number and time formats.

The pages decide nothing: each calls a service (nubis.services.accounts, operations,
audit_log) with the signed-in principal, and the Guard there authorizes (403 for a role that
may not, recorded) and records. The tabs only hide links a principal could not follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from nubis.security.policy import Action, Principal
from nubis.web.ui import charts
from nubis.web.ui.common import archive_of, signed_in
from nubis.web.ui.render import page

P = ParamSpec("P")
T = TypeVar("T")


async def call(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A service call, off the event loop (the index and the audit trail block)."""
    return await run_in_threadpool(fn, *args, **kwargs)


class Formats:
    """Number and time formats for the templates (``fmt.size(n)``...)."""

    size = staticmethod(charts.size)
    count = staticmethod(charts.count)
    money = staticmethod(charts.money)

    @staticmethod
    def when_ms(ms: int | None) -> str:
        if ms is None:
            return ""
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")

    @staticmethod
    def when_s(seconds: int | None) -> str:
        if seconds is None:
            return "never"
        return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")

    @staticmethod
    def percent(fraction: float | None) -> str:
        return "" if fraction is None else f"{fraction:.0%}"


def may(request: Request, principal: Principal) -> dict[str, bool]:
    """Which admin tabs to show: asked of the policy, not recorded (the services decide)."""
    policy = archive_of(request).policy
    return {
        "can_admin": policy.decide(principal, Action.ADMIN).allowed,
        "can_operate": policy.decide(principal, Action.OPERATE).allowed,
        "can_audit": policy.decide(principal, Action.AUDIT).allowed,
    }


def admin_page(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    section: str,
    status_code: int = 200,
) -> HTMLResponse:
    principal = signed_in(request)
    values = {
        "section": section,
        "fmt": Formats,
        "notice": None,
        "error": None,
        **may(request, principal),
        **context,
    }
    return page(request, template, values, status_code=status_code)


def redirect(path: str) -> RedirectResponse:
    """After a change: back to a page (POST-redirect-GET), which names what was done."""
    return RedirectResponse(path, 303)


def checked(form: FormData, name: str) -> bool:
    return form.get(name) in ("on", "true", "1", "yes")


def chosen(form: FormData, name: str) -> list[str]:
    return [v for v in form.getlist(name) if isinstance(v, str)]


def integer(text: str | None, name: str, default: int, low: int, high: int) -> int:
    """A bounded integer of a query string or form; the default when absent or malformed (a
    page's view parameters are not worth a failure)."""
    if text is None or not text.strip().lstrip("-").isdigit() or len(text) > 12:
        return default
    return max(low, min(high, int(text)))


__all__ = [
    "Formats",
    "admin_page",
    "call",
    "checked",
    "chosen",
    "integer",
    "may",
    "redirect",
]
