"""Deadlines for HTTP requests that stop arriving: uvicorn's HTTP protocol with a header timeout
and a body timeout (issue 9 item 7).

uvicorn closes a connection idle *between* requests (``timeout_keep_alive``) but not one that
opened and sends nothing, nor one whose request head or body stops half-way: each holds a socket
and its buffers for ever, so a few thousand such connections (slowloris) wear a server down
without ever authenticating. :class:`GuardedHttpToolsProtocol`, which ``nubis serve`` names as
uvicorn's ``http`` protocol, adds:

* **Header timeout** (``http_header_timeout_seconds``): the request line and headers must be
  complete within this many seconds of the connection opening, or of the first byte of a
  further request on a kept-alive connection. Otherwise the connection is closed, after a 408
  Request Timeout (RFC 9110 15.5.9, with ``Connection: close``) if part of a request came.
* **Body timeout** (``http_body_timeout_seconds``): while a request body is being received, no
  period of this many seconds may pass without a byte of it, unless the archive itself is the
  one not reading (flow control has paused the socket because the application is busy with
  what came, or a ``100 Continue`` is still owed). Otherwise the application sees the client
  disconnect (STOW-RS then keeps the parts it received whole and drops the unfinished one: its
  spool file is removed, nothing of it is stored), the client gets a 408 if no response has
  started, and the connection is closed.
* A request answered before its body was received (a 401 for an upload without credentials, a
  415, a 403) has the rest of its body read and dropped for at most the body timeout in all,
  however it trickles, then its connection closed (nginx's lingering close: closing at once
  could reset the connection before the client has read the answer). So an unauthenticated
  body never holds a connection for longer than that.

The header timeout is a deadline, not an idle timeout, so trickling a header a byte at a time
does not help. The body timeout is an idle timeout, as nginx's ``client_body_timeout``: an
authenticated client that trickles a byte per period keeps its upload alive (it is then its
own credentials that are spent).

Timeouts reach each worker's protocol instances through the lifespan state
(:data:`STATE_KEY`, set by nubis.web.app), the one channel from the application to uvicorn's
per-connection objects; without it (lifespan off) the defaults apply. The class relies on
uvicorn's httptools protocol (``uvicorn[standard]`` installs httptools); its test is
tests/integration/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("nubis.web")

STATE_KEY = "nubis.client_timeouts"
PROTOCOL = "nubis.web.slow_clients:GuardedHttpToolsProtocol"


@dataclass(frozen=True)
class ClientTimeouts:
    header_seconds: float = 20.0
    body_seconds: float = 60.0


def _timeout_response(reason: str) -> bytes:
    body = json.dumps({"status": 408, "reason": reason}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines of the module docs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        timeouts = self.app_state.get(STATE_KEY)
        self._timeouts = timeouts if isinstance(timeouts, ClientTimeouts) else ClientTimeouts()
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_bytes = 0
        self._request_begun = False
        self._receiving_body = False

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # ------------------------------------------------------------------ parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._header_timer is None:  # a further request on a kept-alive connection
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._request_begun = False
        self._receiving_body = True
        self._body_bytes = 0
        super().on_headers_complete()
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._receiving_body = False
        self._cancel_body_timer()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._receiving_body and not self.transport.is_closing():
            # Answered before its body came (401, 403, 415...): the rest is read and dropped
            # (closing at once could reset the connection before the client reads the answer)
            # for at most the body timeout in all, however it trickles; then closed.
            self._cancel_body_timer()
            self._body_timer = self.loop.call_later(
                self._timeouts.body_seconds, self._linger_expired
            )
        super().on_response_complete()

    # ------------------------------------------------------------------ timers
    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(
            self._timeouts.header_seconds, self._header_expired
        )

    def _arm_body_timer(self) -> None:
        if self._receiving_body and self._body_timer is None:
            self._body_timer = self.loop.call_later(self._timeouts.body_seconds, self._body_check)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_header_timer()
        self._cancel_body_timer()

    def _header_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        log.debug(
            "closed a connection from %s: no complete request head within %.0f s",
            _address(self.client),
            self._timeouts.header_seconds,
        )
        if self._request_begun:
            self.transport.write(_timeout_response("the request headers did not arrive in time"))
        self.transport.close()

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._receiving_body:
            return
        cycle = self.cycle
        archive_behind = self.flow.read_paused or (
            cycle is not None and cycle.waiting_for_100_continue
        )
        if self._body_bytes or archive_behind:
            self._body_bytes = 0
            self._arm_body_timer()
            return
        log.info(
            "cut a request body from %s: nothing arrived for %.0f s",
            _address(self.client),
            self._timeouts.body_seconds,
        )
        self._receiving_body = False
        if cycle is not None:
            if not cycle.response_started:
                self.transport.write(_timeout_response("the request body stopped arriving"))
            # The application must see a disconnect, and nothing it sends may follow the 408.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _linger_expired(self) -> None:
        self._body_timer = None
        if self._receiving_body and not self.transport.is_closing():
            self.transport.close()


def _address(client: tuple[str, int] | None) -> str:
    return client[0] if client else "?"


__all__ = ["PROTOCOL", "STATE_KEY", "ClientTimeouts", "GuardedHttpToolsProtocol"]
