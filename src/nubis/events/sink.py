"""Where a webhook goes: one HTTP POST, its answer reduced to taken or a reason why not.

No redirect is followed (a receiver that moved is told to the admin through the failure,
rather than the signed body going wherever a 3xx points), and every attempt is bounded by the
timeout, so a slow receiver costs the delivery job that long at most, and ingest nothing.
"""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from nubis.logs import redact_url

__all__ = ["HttpSink", "WebhookSink"]


class WebhookSink(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        """Send; None when the receiver took it (2xx), else why not (for the admin)."""
        ...


class HttpSink:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tls = ssl.create_default_context()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, parts.port, timeout=self.timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(host, parts.port, timeout=self.timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(
                "POST",
                target,
                body=body,
                headers={"Content-Type": "application/json", **headers},
            )
            response = conn.getresponse()
            response.read(64 << 10)
        except (OSError, http.client.HTTPException) as exc:
            return f"{redact_url(url)}: {type(exc).__name__}: {exc}"[:500]
        finally:
            conn.close()
        if 200 <= response.status < 300:
            return None
        return f"{redact_url(url)} answered HTTP {response.status}"
