"""The archive's own URL, for every URL it hands out: BulkDataURI in metadata, Retrieve URL in
QIDO-RS and STOW-RS answers, the generated OHIF configuration, the OIDC redirect URI.

With the ``public_url`` setting that is the URL, whatever the request says: the operator knows
how clients reach the archive (through a reverse proxy, a load balancer, a path prefix).
Without it, the URL is built from the request: its scheme and ``Host``, which
web/proxies.py has already taken from ``Forwarded``/``X-Forwarded-*`` when a trusted proxy sent
them, and completed with the archive's own port when a client left it out.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.requests import Request


def parse_public_url(text: str) -> str:
    """``text`` as a root URL without its trailing slash ("" stays ""); ValueError otherwise."""
    text = text.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http(s) URL such as https://pacs.example.org")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{text!r}: a root URL has no query, fragment or user")
    return text.rstrip("/")


def site_url(request: Request) -> str:
    """The archive's root URL for this request, without a trailing slash."""
    public = request.app.state.archive.settings.public_url
    if public:
        return parse_public_url(public)
    return str(request.base_url).rstrip("/")


__all__ = ["parse_public_url", "site_url"]
