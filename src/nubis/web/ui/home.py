"""The web face's entry: ``/`` and ``/ui/`` send a browser to the study browser or sign-in."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from nubis.web.ui.common import signed_in
from nubis.web.ui.render import page


async def root(request: Request) -> Response:
    return RedirectResponse("/ui/", 303)


async def home(request: Request) -> Response:
    principal = signed_in(request)
    return page(request, "home.html", {"roles": sorted(principal.roles)})


def routes() -> list[Route]:
    return [Route("/ui/", home, methods=["GET"])]


__all__ = ["root", "routes"]
