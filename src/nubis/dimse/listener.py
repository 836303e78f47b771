"""One listening socket per DICOM port for all the worker processes of a node.

Every ``nubis serve`` worker serves DIMSE. With a socket of its own per worker (SO_REUSEPORT)
the kernel assigns each connection to a worker by a hash of its addresses, whatever that
worker is doing: four storescu associations landed 3 + 1 on two workers in 6 runs of 8, and
the worker with three is held to one core by its GIL while the other idles. Associations are
long (a study per association), so that imbalance lasts.

Here the first worker to start binds the port and hands the listening socket to the others
(SCM_RIGHTS over an abstract Unix socket named after the data folder and the port, answered
only to processes of the same user). All of them then accept from one queue: a worker whose
GIL is busy comes back to ``accept`` later than an idle one, so new associations go to the
workers with room.

If the hand-over fails (not Linux, the first worker died early), a worker binds a socket of
its own with SO_REUSEPORT, as before: the port still works, only without the shared queue.
A worker restarted after the first one died becomes the new first one and binds a second
socket with SO_REUSEPORT; the kernel then splits new connections between the two queues.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import struct
import threading
import time
from pathlib import Path

log = logging.getLogger("nubis.dimse")

# How long a worker waits for the first one to hand the socket over before binding its own.
HANDOVER_WAIT = 10.0
_BACKLOG = 128


def _name(data_dir: Path, host: str, port: int) -> bytes:
    key = hashlib.sha256(f"{data_dir.resolve()}|{host}|{port}".encode()).hexdigest()[:24]
    return b"\0nubis-dimse-" + key.encode()  # abstract namespace: no file to clean up


def _bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A worker that could not get the shared socket still binds the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class SharedListener:
    """The listening socket of one DICOM port, shared by the workers of one data folder."""

    def __init__(self, data_dir: Path, host: str, port: int) -> None:
        self.address = (host, port)
        self._name = _name(data_dir, host, port)
        self._rendezvous: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.socket = self._get()

    def _get(self) -> socket.socket:
        deadline = time.monotonic() + HANDOVER_WAIT
        while True:
            rendezvous = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                rendezvous.bind(self._name)
            except OSError:
                rendezvous.close()  # another worker is first: ask it
                received = self._receive()
                if received is not None:
                    return received
                if time.monotonic() > deadline:
                    log.warning(
                        "DIMSE port %d: no shared socket, binding one of our own",
                        self.address[1],
                    )
                    return _bind_tcp(*self.address)
                time.sleep(0.05)
                continue
            # First worker: bind the port, then answer the others.
            try:
                listener = _bind_tcp(*self.address)
            except BaseException:
                rendezvous.close()
                raise
            rendezvous.listen(16)
            self._rendezvous = rendezvous
            self._thread = threading.Thread(
                target=self._hand_over,
                args=(rendezvous, listener.fileno()),
                name=f"nubis-dimse-share-{self.address[1]}",
                daemon=True,
            )
            self._thread.start()
            return listener

    def _receive(self) -> socket.socket | None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(2.0)
                conn.connect(self._name)
                # Anyone may bind an abstract name: take a socket only from our own user.
                if _peer_uid(conn) != os.getuid():
                    return None
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 16, 1)
        except OSError:
            return None  # not listening yet, or gone
        if not fds:
            return None
        received = socket.socket(fileno=fds[0])
        for extra in fds[1:]:
            os.close(extra)
        try:
            listening = received.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            port = received.getsockname()[1]
        except OSError:
            listening, port = 0, None
        if not listening or port != self.address[1]:
            received.close()
            return None
        return received

    def _hand_over(self, rendezvous: socket.socket, fd: int) -> None:
        while True:
            try:
                conn, _ = rendezvous.accept()
            except OSError:
                return  # closed by close()
            with conn:
                try:
                    uid = _peer_uid(conn)
                    if uid != os.getuid():
                        # Whoever holds this socket can take our associations.
                        log.warning("DIMSE socket asked for by uid %d: refused", uid)
                        continue
                    socket.send_fds(conn, [b"s"], [fd])
                except OSError:
                    continue

    def close(self) -> None:
        if self._rendezvous is not None:
            with contextlib.suppress(OSError):
                self._rendezvous.shutdown(socket.SHUT_RDWR)
            self._rendezvous.close()
            self._rendezvous = None
        self.socket.close()
