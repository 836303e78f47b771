"""The web face: pages for people, served by ``nubis serve`` itself.

Each module adds its routes to :func:`ui_routes`; every page goes through the same services as
DICOMweb, with the principal of the browser's session (nubis.security.sessions).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from nubis.web.ui import admin, ohif, oidc, shares, signin, studies, study, upload, viewer


def ui_routes() -> list[BaseRoute]:
    return [
        Route("/", studies.root, methods=["GET"]),
        *signin.routes(),
        *studies.routes(),
        *study.routes(),
        *upload.routes(),
        *shares.routes(),
        *admin.routes(),
        *viewer.routes(),
        *ohif.routes(),
        *oidc.routes(),
        Mount("/ui/static", StaticFiles(packages=[("nubis.web.ui", "static")]), name="static"),
    ]


__all__ = ["ui_routes"]
