"""HTTP connections spread over the worker processes by how busy each is.

uvicorn's workers share one listening socket and each accepts whatever is queued when its
event loop sees it readable, so a few keep-alive clients connecting together often land 3 + 1
or 4 + 0 on two workers: measured, four STOW-RS clients left one worker at 1.1 s of CPU and the
other at 6.9 s over the same 6.7 s, the GIL holding the busy one to a core while the other
idled. (The DICOM port had the same problem, solved in nubis.dimse.listener.)

Here each worker accepts for itself: one holding no connection accepts at once; one holding
``n`` waits ``n`` half-milliseconds first, so an idle worker, woken by the same readiness, takes
the connection meanwhile; if it is still queued after the wait, the others are as busy and this
one takes it. The waits matter while connections are few and long (keep-alive clients, whose
placement lasts); a worker holding more than :data:`FEW` accepts at once, up to :data:`BURST`
at a time, so a crowd of short connections is accepted at full speed.

:func:`install` puts this in place of uvicorn's own accepting for servers given listening
sockets by its multi-process supervisor (``nubis serve`` with ``workers`` > 1); it is called
in each worker process when the application is built, before uvicorn starts serving.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Sized
from typing import Any

from uvicorn.server import Server

log = logging.getLogger("nubis.web")

DELAY_PER_CONNECTION = 0.0005  # seconds a worker waits per connection it holds
FEW = 8  # beyond this many connections a worker accepts without waiting
BURST = 16  # connections taken at once then
ACCEPT_RETRY_SECONDS = 1.0

_original_startup = Server.startup


class FairListener:
    """Accepts from a shared listening socket on behalf of one worker (see the module docs);
    closes like the ``asyncio.Server`` it stands in for."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        connections: Sized,
        ssl: Any = None,
        backlog: int = 2048,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self.protocol_factory = protocol_factory
        self.connections = connections
        self.ssl = ssl
        self._waiting: asyncio.TimerHandle | None = None
        self._starting = 0  # accepted, not yet handed to a protocol: held all the same
        self._closed = False
        sock.setblocking(False)
        sock.listen(backlog)  # uvicorn binds the socket; asyncio's create_server would listen
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        held = len(self.connections) + self._starting
        if held == 0:
            self._accept(1)
            return
        if held > FEW:
            self._accept(BURST)
            return
        # Not readable again until the wait is over (the socket stays readable meanwhile).
        self.loop.remove_reader(self.sock.fileno())
        self._waiting = self.loop.call_later(DELAY_PER_CONNECTION * held, self._waited)

    def _waited(self) -> None:
        self._waiting = None
        if self._closed:
            return
        self._accept(1)
        if self._waiting is None:  # not paused by an accept that failed
            self.loop.add_reader(self.sock.fileno(), self._readable)

    def _accept(self, at_most: int) -> None:
        for _ in range(at_most):
            try:
                conn, _addr = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # another worker took it
            except OSError as exc:  # out of descriptors and the like: pause, as asyncio does
                log.error("could not accept an HTTP connection: %s; retrying in 1 s", exc)
                if self._waiting is None and not self._closed:
                    self.loop.remove_reader(self.sock.fileno())
                    self._waiting = self.loop.call_later(ACCEPT_RETRY_SECONDS, self._waited)
                return
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._starting += 1
            self.loop.create_task(self._serve(conn))

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(self.protocol_factory, conn, ssl=self.ssl)
        except Exception as exc:  # a failed TLS handshake, a client gone at once
            log.debug("connection dropped before it was served: %s", exc)
            conn.close()
        finally:
            self._starting -= 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None
        else:
            self.loop.remove_reader(self.sock.fileno())

    async def wait_closed(self) -> None:
        return None


async def _fair_startup(self: Server, sockets: list[socket.socket] | None = None) -> None:
    if not sockets or self.config.workers < 2:
        await _original_startup(self, sockets=sockets)
        return
    await _original_startup(self, sockets=[])  # lifespan, state; no listener of uvicorn's
    if not self.started:
        return
    config = self.config

    def create_protocol() -> asyncio.Protocol:
        return config.http_protocol_class(  # type: ignore[call-arg]
            config=config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )

    loop = asyncio.get_running_loop()
    listeners: list[Any] = [
        FairListener(
            loop, sock, create_protocol, self.server_state.connections, config.ssl, config.backlog
        )
        for sock in sockets
    ]
    # uvicorn only closes and awaits these at shutdown, which FairListener does as a Server.
    self.servers = listeners


def install() -> None:
    """Accept fairly in this worker process (idempotent)."""
    Server.startup = _fair_startup  # type: ignore[method-assign]
