"""Response headers that make the web face safe by construction.

- ``Content-Security-Policy``: scripts, styles, images and connections from this origin only;
  no inline script or style (no ``unsafe-inline``), no ``eval``, no plug-ins, and
  ``frame-ancestors 'none'`` so no other site can frame a page (clickjacking). ``blob:`` and
  ``data:`` images are for the viewer's canvases and thumbnails.
- ``Referrer-Policy: no-referrer``: a share link's token in a URL never leaves in a Referer.
- ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` (older browsers).
- ``Cache-Control: no-store`` on pages and API answers: they hold patient data, which must not
  stay in a shared or back-button cache. The web face's static files may be cached but are
  revalidated (``no-cache``: a 304 from their ETag): their URLs carry no version, and after an
  upgrade a browser must not mix old and new viewer modules.

Applied to every HTTP response of the archive: a JSON or DICOM answer gains nothing to lose.
Paths whose own application needs another policy (OHIF at /ohif/) set theirs, which is kept.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'; object-src 'none'"
)
STATIC_PREFIX = "/ui/static/"


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("content-security-policy", CONTENT_SECURITY_POLICY)
                headers.setdefault("referrer-policy", "no-referrer")
                headers.setdefault("x-content-type-options", "nosniff")
                headers.setdefault("x-frame-options", "DENY")
                if static:
                    headers.setdefault("cache-control", "no-cache")
                else:
                    headers.setdefault("cache-control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["CONTENT_SECURITY_POLICY", "SecurityHeadersMiddleware"]
