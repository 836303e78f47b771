"""Cross-origin use of the archive from browser scripts of other sites (CORS).

The ``cors_origins`` setting lists the origins allowed; by default none is, and browsers keep
other sites' scripts from reading anything of the archive. For a listed origin:

- A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) is answered
  here, before authentication: browsers send preflights without credentials (Fetch standard,
  CORS-preflight request), so one that reached authentication would be refused and the real
  request never sent. A preflight grants nothing; it only tells the browser what it may send.
- The request itself goes through authentication like any other: it needs ``Authorization`` or
  ``X-API-Key``. ``Access-Control-Allow-Credentials`` is not sent, so the browser hides the
  answer to any request that rode on cookies: a browser session of this archive is never
  usable by another site's script, even a listed one.
- Its answer names the origin in ``Access-Control-Allow-Origin`` and exposes the headers a
  DICOMweb client reads (``Content-Type`` boundaries, ``Warning``, ``Location``, ranges).

An origin that is not listed gets no ``Access-Control-Allow-Origin`` at all (its preflights a
400), so the browser refuses its scripts the answer.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

# PUT: Change Workitem State (UPS-RS, PS3.18 11.7).
ALLOWED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE")
ALLOWED_HEADERS = (
    "Authorization",
    "X-API-Key",
    "Accept",
    "Content-Type",
    "Range",
    "X-Nubis-Break-Glass",
)
EXPOSED_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Location",
    "Content-Range",
    "Accept-Ranges",
    "Location",
    "Warning",
    "Retry-After",
    "WWW-Authenticate",
)
PREFLIGHT_MAX_AGE_SECONDS = 600


def parse_origins(text: str) -> tuple[str, ...]:
    """``"https://a.example, http://b:8080"`` as origins; ValueError naming a bad entry."""
    origins = []
    for entry in text.split(","):
        entry = entry.strip().rstrip("/")
        if not entry:
            continue
        parts = urlsplit(entry)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path
            or parts.query
            or parts.username
            or "*" in entry
        ):
            raise ValueError(
                f"{entry!r} is not an origin (scheme://host[:port], e.g. https://viewer.example.org"
                "; '*' is not allowed)"
            )
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


def cors_middleware(origins_setting: str) -> list[Middleware]:
    """The CORS layer for the setting's origins, or none when it lists none."""
    origins = parse_origins(origins_setting)
    if not origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=ALLOWED_METHODS,
            allow_headers=ALLOWED_HEADERS,
            allow_credentials=False,
            expose_headers=EXPOSED_HEADERS,
            max_age=PREFLIGHT_MAX_AGE_SECONDS,
        )
    ]


__all__ = ["cors_middleware", "parse_origins"]
