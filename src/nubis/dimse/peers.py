"""Remote AEs and who may do what over DIMSE.

The peer table is a TOML file (setting ``dimse_peers``, by default ``dimse-peers.toml`` in the
data folder), edited with ``nubis dimse peers add|remove|list`` and re-read by the server
whenever it changes, so no restart is needed. It names each remote AE (AE title, host, port)
and what it may do: store (C-STORE, storage commitment), query (C-FIND) and retrieve
(C-MOVE, C-GET). C-MOVE sends only to destinations in this table (PS3.4 C.4.2.1.4.1: an
unknown destination is 0xA801).

A caller is admitted when its calling AE title is in the table and, if the entry has a host,
it connects from that host. Callers not in the table are governed by
``dimse_unknown_callers``: by default they are let in from the loopback interface only, so a
fresh install is usable on one machine and closed to the network.

A file rather than an index table: #3 runs DIMSE in one process per node; when nodes share an
index (#5) the table should move into it (see docs/architecture.md).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_AE_MAX = 16  # PS3.5 Table 6.2-1: AE is at most 16 characters


class PeerError(ValueError):
    """A peer entry or the peer file is malformed; the message says what and where."""


@dataclass(frozen=True)
class Peer:
    """A remote AE: where to reach it and what it may do here."""

    ae_title: str
    host: str = ""
    port: int = 0
    store: bool = True
    query: bool = True
    retrieve: bool = True

    def __post_init__(self) -> None:
        title = self.ae_title.strip()
        if not title or len(title) > _AE_MAX or "\\" in title or not title.isprintable():
            raise PeerError(f"AE title {self.ae_title!r} is not 1-16 printable characters")
        if not 0 <= self.port < 65536:
            raise PeerError(f"port {self.port} of {title} is not 0-65535")
        object.__setattr__(self, "ae_title", title)


@dataclass(frozen=True)
class Permissions:
    """What an admitted caller may do on its association."""

    store: bool
    query: bool
    retrieve: bool
    known: bool  # in the peer table (False: an unknown caller let in by policy)


ALL = Permissions(store=True, query=True, retrieve=True, known=False)


class PeerTable:
    """The peer file, loaded lazily and reloaded when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._peers: dict[str, Peer] = {}

    def _load(self) -> dict[str, Peer]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._peers = None, {}
            return self._peers
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return self._peers
        try:
            data = tomllib.loads(self.path.read_text())
            peers = {}
            for entry in data.get("peer", []):
                peer = Peer(**entry)
                peers[peer.ae_title] = peer
        except (OSError, tomllib.TOMLDecodeError, TypeError, PeerError) as exc:
            # Keep serving with the last good table rather than open or close everyone.
            log.error(
                "cannot read DIMSE peer file %s: %s (keeping the previous table)", self.path, exc
            )
            return self._peers
        self._stamp, self._peers = stamp, peers
        return peers

    def all(self) -> list[Peer]:
        with self._lock:
            return sorted(self._load().values(), key=lambda p: p.ae_title)

    def get(self, ae_title: str) -> Peer | None:
        with self._lock:
            return self._load().get(ae_title.strip())

    def put(self, peer: Peer) -> None:
        """Add or replace the entry for ``peer.ae_title``."""
        with self._lock:
            peers = dict(self._load())
            peers[peer.ae_title] = peer
            self._write(peers)

    def remove(self, ae_title: str) -> bool:
        with self._lock:
            peers = dict(self._load())
            if peers.pop(ae_title.strip(), None) is None:
                return False
            self._write(peers)
            return True

    def _write(self, peers: dict[str, Peer]) -> None:
        lines = ["# Remote DICOM AEs of nubis; edit with `nubis dimse peers`.\n"]
        for peer in sorted(peers.values(), key=lambda p: p.ae_title):
            # JSON strings are valid TOML basic strings (same escapes for what AE/host can hold).
            lines += [
                "\n[[peer]]\n",
                f"ae_title = {json.dumps(peer.ae_title)}\n",
                f"host = {json.dumps(peer.host)}\n",
                f"port = {peer.port}\n",
                f"store = {str(peer.store).lower()}\n",
                f"query = {str(peer.query).lower()}\n",
                f"retrieve = {str(peer.retrieve).lower()}\n",
            ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(lines))
        os.replace(tmp, self.path)  # readers see the old or the new table, never half of one
        self._stamp = None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _addresses(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


@dataclass(frozen=True)
class Decision:
    permissions: Permissions | None  # None: reject the association
    reason: str


class AccessPolicy:
    """Decides, per association, whether a caller is admitted and what it may do."""

    def __init__(self, peers: PeerTable, unknown_callers: str) -> None:
        if unknown_callers not in ("loopback", "refuse", "allow"):
            raise ValueError(f"unknown_callers: {unknown_callers!r}")
        self.peers = peers
        self.unknown_callers = unknown_callers

    def admit(self, calling_ae: str, address: str) -> Decision:
        peer = self.peers.get(calling_ae)
        if peer is not None:
            if peer.host and address not in _addresses(peer.host) | {peer.host}:
                return Decision(
                    None, f"calling AE {peer.ae_title} is known, but not from host {address}"
                )
            perms = Permissions(peer.store, peer.query, peer.retrieve, known=True)
            return Decision(perms, f"known peer {peer.ae_title}")
        if self.unknown_callers == "allow":
            return Decision(ALL, "unknown caller, dimse_unknown_callers=allow")
        if self.unknown_callers == "loopback" and is_loopback(address):
            return Decision(ALL, "unknown caller on loopback")
        return Decision(None, f"calling AE title {calling_ae.strip()!r} is not a known peer")
