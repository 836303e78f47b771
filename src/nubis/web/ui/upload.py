"""Upload from the browser, ``/ui/upload``: DICOM files or a whole folder (a CD's content).

The page only hosts the script (static/upload.js); the files go, one request each, to
``POST /dicom-web/studies`` as STOW-RS (multipart/related; type="application/dicom") with the
session cookie and the session's CSRF token in ``X-CSRF-Token``: the same store path,
authorization and audit as any STOW-RS client. The script skips DICOMDIR and files that are
not PS3.10 (no "DICM" after the 128-byte preamble) with a per-file "skipped" result, and
keeps a few requests in flight at once.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.web.ui.common import signed_in
from nubis.web.ui.render import may, page

__all__ = ["routes"]


async def upload_page(request: Request) -> Response:
    principal = signed_in(request)
    return page(request, "upload.html", {"may_store": may(principal, "write")})


def routes() -> list[Route]:
    return [Route("/ui/upload", upload_page, methods=["GET"])]
