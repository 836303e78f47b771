"""Where a webhook goes: one HTTP POST, its answer reduced to taken or a reason why not.

No redirect is followed (a receiver that moved is told to the admin through the failure,
rather than the signed body going wherever a 3xx points), and every attempt is bounded by the
timeout, so a slow receiver costs the delivery job that long at most, and ingest nothing. The
connection to a receiver is kept open between deliveries (HTTP/1.1 keep-alive, one per thread
and receiver): a run sends many entries to one receiver, and a TCP and TLS handshake each
would cost more than the request.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from nubis.logs import redact_url

__all__ = ["HttpSink", "WebhookSink"]

# A kept connection the receiver closed in between fails with one of these before anything was
# sent: the request is made again on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


class WebhookSink(Protocol):
    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        """Send; None when the receiver took it (2xx), else why not (for the admin)."""
        ...


class HttpSink:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._tls: ssl.SSLContext | None = None  # loading the CA store costs 60 ms: on first use
        self._kept = threading.local()

    def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> str | None:
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"Content-Type": "application/json", **headers}
        for fresh in (False, True):
            conn, reused = self._connection(parts.scheme, parts.hostname or "", parts.port, fresh)
            try:
                conn.request("POST", target, body=body, headers=sent)
                response = conn.getresponse()
                response.read(64 << 10)
            except _STALE as exc:
                self._drop(conn)
                if reused and not fresh:
                    continue
                return f"{redact_url(url)}: {type(exc).__name__}: {exc}"[:500]
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                return f"{redact_url(url)}: {type(exc).__name__}: {exc}"[:500]
            if response.will_close or not response.isclosed():
                self._drop(conn)  # closing, or a body longer than read: not reusable
            if 200 <= response.status < 300:
                return None
            return f"{redact_url(url)} answered HTTP {response.status}"
        raise AssertionError("unreachable")

    def _connection(
        self, scheme: str, host: str, port: int | None, fresh: bool
    ) -> tuple[http.client.HTTPConnection, bool]:
        kept: dict[tuple[str, str, int | None], http.client.HTTPConnection]
        kept = self._kept.__dict__.setdefault("connections", {})
        key = (scheme, host, port)
        if not fresh and key in kept:
            return kept[key], True
        if key in kept:
            self._drop(kept[key])
        conn: http.client.HTTPConnection
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            conn = http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
        kept[key] = conn
        return conn, False

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        kept = self._kept.__dict__.get("connections", {})
        for key, value in list(kept.items()):
            if value is conn:
                del kept[key]
