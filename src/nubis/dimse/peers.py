"""Remote AEs and who may do what over DIMSE.

The peer table is the index table ``dimse_peers`` (migration 0007), so every node of an
archive admits the same callers and knows the same C-MOVE destinations; ``nubis dimse peers
add|remove|list|import`` edit it through the index, from any machine with the archive's
settings, while the nodes run. It names each remote AE (AE title, host, port), what it may do:
store (C-STORE, storage commitment), query (C-FIND) and retrieve (C-MOVE, C-GET), and
optionally the TLS client certificate it must present (subject and/or SHA-256 fingerprint).
C-MOVE sends only to destinations in this table (PS3.4 C.4.2.1.4.1: an unknown destination is
0xA801).

A caller is admitted when its calling AE title is in the table, it connects from the entry's
host (if any) and, if the entry binds a certificate, it came over DICOM TLS with that
certificate (PS3.15 B.12; the CA is checked by the handshake, the binding here). Callers not in
the table are governed by ``dimse_unknown_callers``: by default they are let in from the
loopback interface only, so a fresh install is usable on one machine and closed to the network.

Each process keeps the table in memory for :data:`CACHE_SECONDS` (``dimse_peers_cache_seconds``)
so admitting an association costs no query: a change or removal reaches every node within that
time. A title not in the cached table re-reads it (at most every :data:`MISS_RELOAD_SECONDS`),
so a peer just added is admitted at once.

The TOML file nodes used to keep (``dimse-peers.toml`` in data_dir, setting ``dimse_peers``) is
read once: ``nubis serve`` imports its entries into the table at start and renames it
``*.imported``; ``nubis dimse peers import FILE`` does the same for any file.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import socket
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from nubis.index.schema import dimse_peers

if TYPE_CHECKING:
    from nubis.index.database import Index

log = logging.getLogger(__name__)

_AE_MAX = 16  # PS3.5 Table 6.2-1: AE is at most 16 characters
CACHE_SECONDS = 5.0
MISS_RELOAD_SECONDS = 0.25


class PeerError(ValueError):
    """A peer entry or the peer file is malformed; the message says what and where."""


def normalize_fingerprint(text: str) -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (``openssl x509 -fingerprint
    -sha256`` prints it upper-case with colons)."""
    digits = text.strip().replace(":", "").lower()
    if digits.startswith("sha256="):
        digits = digits[len("sha256=") :]
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise PeerError(f"{text!r} is not a SHA-256 fingerprint (64 hex digits)")
    return digits


@dataclass(frozen=True)
class Peer:
    """A remote AE: where to reach it, what it may do here, which certificate it must show."""

    ae_title: str
    host: str = ""
    port: int = 0
    store: bool = True
    query: bool = True
    retrieve: bool = True
    tls_subject: str = ""  # RFC 4514, as `nubis dimse peers list` and rejections print it
    tls_fingerprint: str = ""  # SHA-256 of the DER certificate

    def __post_init__(self) -> None:
        title = self.ae_title.strip()
        if not title or len(title) > _AE_MAX or "\\" in title or not title.isprintable():
            raise PeerError(f"AE title {self.ae_title!r} is not 1-16 printable characters")
        if not 0 <= self.port < 65536:
            raise PeerError(f"port {self.port} of {title} is not 0-65535")
        object.__setattr__(self, "ae_title", title)
        object.__setattr__(self, "tls_subject", self.tls_subject.strip())
        if self.tls_fingerprint:
            object.__setattr__(self, "tls_fingerprint", normalize_fingerprint(self.tls_fingerprint))

    @property
    def binds_certificate(self) -> bool:
        return bool(self.tls_subject or self.tls_fingerprint)


@dataclass(frozen=True)
class PeerCertificate:
    """The client certificate a DICOM TLS caller presented (verified against dimse_tls_ca)."""

    subject: str
    fingerprint: str

    @classmethod
    def from_der(cls, der: bytes) -> PeerCertificate:
        from cryptography import x509

        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        return cls(subject, hashlib.sha256(der).hexdigest())

    def matches(self, peer: Peer) -> bool:
        if peer.tls_fingerprint and peer.tls_fingerprint != self.fingerprint:
            return False
        return not peer.tls_subject or peer.tls_subject == self.subject


@dataclass(frozen=True)
class Permissions:
    """What an admitted caller may do on its association."""

    store: bool
    query: bool
    retrieve: bool
    known: bool  # in the peer table (False: an unknown caller let in by policy)


ALL = Permissions(store=True, query=True, retrieve=True, known=False)


def read_toml(path: Path) -> list[Peer]:
    """The entries of a peer file of earlier versions (``[[peer]]`` tables)."""
    try:
        data = tomllib.loads(path.read_text())
        return [Peer(**entry) for entry in data.get("peer", [])]
    except (OSError, tomllib.TOMLDecodeError, TypeError, PeerError) as exc:
        raise PeerError(f"cannot read DIMSE peer file {path}: {exc}") from exc


def _row(peer: Peer, now: int) -> dict[str, Any]:
    return {
        "ae_title": peer.ae_title,
        "host": peer.host,
        "port": peer.port,
        "may_store": peer.store,
        "may_query": peer.query,
        "may_retrieve": peer.retrieve,
        "tls_subject": peer.tls_subject,
        "tls_fingerprint": peer.tls_fingerprint,
        "updated_at": now,
    }


def _peer(row: Any) -> Peer:
    return Peer(
        row.ae_title,
        row.host,
        int(row.port),
        bool(row.may_store),
        bool(row.may_query),
        bool(row.may_retrieve),
        row.tls_subject,
        row.tls_fingerprint,
    )


class PeerTable:
    """The ``dimse_peers`` index table, cached in this process for ``cache_seconds``."""

    def __init__(self, index: Index, cache_seconds: float = CACHE_SECONDS) -> None:
        self.index = index
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._peers: dict[str, Peer] = {}
        self._loaded_at: float | None = None

    def _read(self) -> dict[str, Peer]:
        with self.index.reading() as conn:
            rows = conn.execute(sa.select(dimse_peers)).all()
        return {p.ae_title: p for p in map(_peer, rows)}

    def _cached(self, *, missing: str | None = None) -> dict[str, Peer]:
        with self._lock:
            now = time.monotonic()
            age = None if self._loaded_at is None else now - self._loaded_at
            stale = age is None or age >= self.cache_seconds
            if not stale and missing is not None and missing not in self._peers:
                stale = age is not None and age >= MISS_RELOAD_SECONDS
            if stale:
                # Under the lock: a burst of associations costs one query, not one each.
                try:
                    self._peers, self._loaded_at = self._read(), now
                except SQLAlchemyError as exc:
                    if self._loaded_at is None:
                        raise  # nothing to decide with: the caller refuses, transiently
                    # An index that is down for a moment keeps the last table rather than
                    # closing the port; try again in a second.
                    log.error("cannot read the DIMSE peer table (keeping the last one): %s", exc)
                    self._loaded_at = now - self.cache_seconds + 1.0
            return self._peers

    def all(self) -> list[Peer]:
        """Every entry, read now (not from the cache)."""
        return sorted(self._read().values(), key=lambda p: p.ae_title)

    def get(self, ae_title: str) -> Peer | None:
        title = ae_title.strip()
        return self._cached(missing=title).get(title)

    def put(self, peer: Peer) -> None:
        """Add or replace the entry for ``peer.ae_title``."""
        self.put_many([peer])

    def put_many(self, peers: list[Peer]) -> None:
        now = int(time.time() * 1000)

        def job(conn: Any) -> None:
            titles = [p.ae_title for p in peers]
            if titles:
                conn.execute(sa.delete(dimse_peers).where(dimse_peers.c.ae_title.in_(titles)))
                conn.execute(sa.insert(dimse_peers), [_row(p, now) for p in peers])

        self.index.write(job)
        self._forget()

    def remove(self, ae_title: str) -> bool:
        title = ae_title.strip()

        def job(conn: Any) -> int:
            result = conn.execute(sa.delete(dimse_peers).where(dimse_peers.c.ae_title == title))
            return int(result.rowcount or 0)

        removed = self.index.write(job) > 0
        self._forget()
        return removed

    def import_file(self, path: Path) -> list[Peer]:
        """Put every entry of a peer file of earlier versions into the table (an entry of the
        file replaces one of the same AE title: the file was that node's truth)."""
        peers = read_toml(path)
        self.put_many(peers)
        return peers

    def _forget(self) -> None:
        with self._lock:
            self._loaded_at = None


def import_legacy_file(table: PeerTable, path: Path) -> int:
    """At start: import a node's old peer file once, then rename it ``*.imported`` so a
    peer removed later through the index does not come back at the next start."""
    if not path.is_file():
        return 0
    peers = table.import_file(path)
    done = path.with_name(path.name + ".imported")
    try:
        os.replace(path, done)
    except OSError as exc:
        # A read-only file (a config mount) is imported again at each start; say so.
        log.warning(
            "imported %d DIMSE peer(s) from %s into the index, but could not rename it (%s): "
            "it will be imported again at the next start; remove it once imported",
            len(peers),
            path,
            exc,
        )
        return len(peers)
    log.warning(
        "imported %d DIMSE peer(s) from %s into the index; the file is now %s and no longer read",
        len(peers),
        path,
        done,
    )
    return len(peers)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _addresses(host: str) -> set[str]:
    try:
        # sockaddr[0] is the address as text for AF_INET and AF_INET6, the families asked for.
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError:
        return set()


@dataclass(frozen=True)
class Decision:
    permissions: Permissions | None  # None: reject the association
    reason: str
    # A known AE title with the wrong certificate (or none): a security alert, not a typo.
    alert: bool = False


class AccessPolicy:
    """Decides, per association, whether a caller is admitted and what it may do."""

    def __init__(self, peers: PeerTable, unknown_callers: str) -> None:
        if unknown_callers not in ("loopback", "refuse", "allow"):
            raise ValueError(f"unknown_callers: {unknown_callers!r}")
        self.peers = peers
        self.unknown_callers = unknown_callers

    def admit(
        self, calling_ae: str, address: str, certificate: PeerCertificate | None = None
    ) -> Decision:
        peer = self.peers.get(calling_ae)
        if peer is not None:
            if peer.host and address not in _addresses(peer.host) | {peer.host}:
                return Decision(
                    None, f"calling AE {peer.ae_title} is known, but not from host {address}"
                )
            if peer.binds_certificate:
                if certificate is None:
                    return Decision(
                        None,
                        f"calling AE {peer.ae_title} must present its TLS client certificate",
                        alert=True,
                    )
                if not certificate.matches(peer):
                    return Decision(
                        None,
                        f"calling AE {peer.ae_title} presented the certificate of "
                        f"{certificate.subject!r} (SHA-256 {certificate.fingerprint}), "
                        "not the one of its peer entry",
                        alert=True,
                    )
            perms = Permissions(peer.store, peer.query, peer.retrieve, known=True)
            return Decision(perms, f"known peer {peer.ae_title}")
        if self.unknown_callers == "allow":
            return Decision(ALL, "unknown caller, dimse_unknown_callers=allow")
        if self.unknown_callers == "loopback" and is_loopback(address):
            return Decision(ALL, "unknown caller on loopback")
        return Decision(None, f"calling AE title {calling_ae.strip()!r} is not a known peer")
