"""Who the HTTP caller is behind a reverse proxy, and by which URL it reached the archive:
``Forwarded`` (RFC 7239) and ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` believed from the
proxies of the ``trusted_proxies`` setting only.

The caller's address goes into every audit record (ParticipantNetworkAccessPoint, PS3.15
A.5.2.1), the break-glass log line and the login throttle's per-address count, so it must be the
address the archive can vouch for. By default nobody is trusted: the address is the TCP peer's,
whatever the headers say. uvicorn's own proxy support is switched off (``nubis serve`` passes
``proxy_headers=False``): it trusts 127.0.0.1 by default and reads ``FORWARDED_ALLOW_IPS`` from
the environment, so any local process could otherwise choose its address.

When the TCP peer is a trusted proxy, ``X-Forwarded-For`` (all its headers, joined) is read from
the right, each hop having appended the address it saw: the first address that is not a trusted
proxy is the caller; if every one is trusted, the leftmost is. An entry that is not an IP
address stops the walk and the last trusted hop is taken instead: a forged or garbled list never
yields an address the archive did not see. ``X-Forwarded-Proto`` (the last one, as the nearest
proxy set it) becomes the request's scheme when it is ``http`` or ``https``, so URLs the archive
builds (STOW-RS Retrieve URLs, BulkDataURIs, the web face's cookies) say ``https`` behind a
TLS-terminating proxy. ``X-Forwarded-Host`` (the last one; with ``X-Forwarded-Port`` when it
names no port) becomes the request's ``Host``, so those URLs name the host and port the client
used, not the proxy's upstream address. A value that is not a host name or address with an
optional port is ignored.

``Forwarded`` (RFC 7239), when a trusted proxy sends it, is read instead of the ``X-Forwarded-*``
headers: its elements are walked from the right by their ``for=`` like ``X-Forwarded-For``, and
the element of the proxy that saw the caller gives ``proto=`` and ``host=``.

A request that does not come from a trusted proxy keeps its own scheme and ``Host``, except that
a ``Host`` without a port is completed with the port the archive listens on when that is not the
scheme's default: a client that left the port out (dicomweb-client sends ``Host: name`` alone)
reached the archive on that port, and URLs built without it would send it to port 80. Behind
port forwarding that changes the port (a container published on 80), set ``public_url``
(web/urls.py), which overrides all of this for the URLs the archive builds.

This runs as the outermost ASGI middleware, so everything below (authentication, the
principal's ``peer``, audit records) sees the resolved address; the web face (issue 10) sits
under it too. DIMSE has no forwarding headers: its peers are TCP peers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?"
)
_FORWARDED_PAIR = re.compile(r'\s*([A-Za-z]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)\s*')
_FORWARDING_HEADERS = frozenset(
    {
        b"forwarded",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_trusted_proxies(text: str) -> tuple[Network, ...]:
    """``"10.0.0.5, 10.1.0.0/16, ::1"`` as networks; ValueError naming a bad entry."""
    networks = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(
                f"{entry!r} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class TrustedProxies:
    networks: tuple[Network, ...] = ()

    def __contains__(self, host: object) -> bool:
        address = _address(host)
        return address is not None and any(address in net for net in self.networks)

    def client(self, peer: str, forwarded_for: Iterable[str]) -> str:
        """The caller of a request that the trusted proxy ``peer`` forwarded."""
        hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
        last_seen = peer
        for hop in reversed(hops):
            address = _address(_strip_port(hop))
            if address is None:
                return last_seen
            if address not in self:
                return str(address)
            last_seen = str(address)
        return last_seen


def _address(host: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(str(host))
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def _strip_port(hop: str) -> str:
    """``[::1]:443`` -> ``::1``, ``10.0.0.1:443`` -> ``10.0.0.1``; a bare address unchanged."""
    if hop.startswith("["):
        return hop[1:].partition("]")[0]
    if hop.count(":") == 1:
        return hop.partition(":")[0]
    return hop


def parse_forwarded(values: Iterable[str]) -> list[dict[str, str]]:
    """RFC 7239 ``Forwarded`` header values as elements (lower-case names, unquoted values),
    in order; a malformed element is an empty one (it vouches for nothing)."""
    elements: list[dict[str, str]] = []
    for value in values:
        for element in _split_outside_quotes(value, ","):
            pairs: dict[str, str] = {}
            for pair in _split_outside_quotes(element, ";"):
                match = _FORWARDED_PAIR.fullmatch(pair)
                if match is None:
                    pairs = {}
                    break
                text = match.group(2)
                if text.startswith('"'):
                    text = re.sub(r"\\(.)", r"\1", text[1:-1])
                pairs[match.group(1).lower()] = text
            elements.append(pairs)
    return elements


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def valid_host(value: str | None) -> str | None:
    """``value`` if it is a host name or address with an optional port, else None."""
    if value is None:
        return None
    value = value.strip()
    return value if _HOST.fullmatch(value) else None


@dataclass
class _Forwarded:
    """What a trusted proxy said about the request it forwarded."""

    client: str | None = None
    proto: str | None = None
    host: str | None = None


def _from_forwarded(trusted: TrustedProxies, peer: str, values: list[str]) -> _Forwarded:
    elements = parse_forwarded(values)
    said = _Forwarded()
    last_seen = peer
    chosen: dict[str, str] = {}
    for element in reversed(elements):
        address = _address(_strip_port(element.get("for", "")))
        chosen = element
        if address is None:
            break
        last_seen = str(address)
        if address not in trusted:
            break
    if elements:
        said.client = last_seen
    said.proto = chosen.get("proto", "").lower() or None
    said.host = valid_host(chosen.get("host"))
    return said


def _from_x_forwarded(
    trusted: TrustedProxies, peer: str, headers: dict[bytes, list[str]]
) -> _Forwarded:
    said = _Forwarded()
    if headers.get(b"x-forwarded-for"):
        said.client = trusted.client(peer, headers[b"x-forwarded-for"])
    if headers.get(b"x-forwarded-proto"):
        said.proto = headers[b"x-forwarded-proto"][-1].split(",")[-1].strip().lower()
    if headers.get(b"x-forwarded-host"):
        host = valid_host(headers[b"x-forwarded-host"][-1].split(",")[-1])
        port = headers.get(b"x-forwarded-port", [""])[-1].split(",")[-1].strip()
        if host is not None and port.isdigit() and not _has_port(host):
            host = valid_host(f"{host}:{port}")
        said.host = host
    return said


def _has_port(host: str) -> bool:
    return host.rpartition("]")[2].count(":") == 1 if host.startswith("[") else ":" in host


def _set_host(scope: Scope, host: str) -> None:
    headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"host"]
    headers.append((b"host", host.encode("latin-1")))
    scope["headers"] = headers


class ForwardedHeadersMiddleware:
    """Resolves ``scope["client"]``, ``scope["scheme"]`` and the ``Host`` header as the module
    docs say."""

    def __init__(self, app: ASGIApp, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if client and client[0] in self.trusted:
            self._believe(scope, client[0])
        else:
            self._complete_host(scope)
        await self.app(scope, receive, send)

    def _believe(self, scope: Scope, peer: str) -> None:
        headers: dict[bytes, list[str]] = {}
        for name, value in scope.get("headers", ()):
            if name in _FORWARDING_HEADERS:
                headers.setdefault(name, []).append(value.decode("latin-1"))
        if headers.get(b"forwarded"):
            said = _from_forwarded(self.trusted, peer, headers[b"forwarded"])
        else:
            said = _from_x_forwarded(self.trusted, peer, headers)
        if said.client is not None and said.client != peer:
            scope["client"] = (said.client, 0)
        if said.proto in ("http", "https"):
            http = scope["type"] == "http"
            scope["scheme"] = said.proto if http else said.proto.replace("http", "ws")
        if said.host is not None:
            _set_host(scope, said.host)

    def _complete_host(self, scope: Scope) -> None:
        server = scope.get("server")
        if not server or server[1] is None:
            return
        port = int(server[1])
        if port == _DEFAULT_PORTS.get(scope.get("scheme", "http")):
            return
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = valid_host(value.decode("latin-1"))
                if host is not None and not _has_port(host):
                    _set_host(scope, f"{host}:{port}")
                return


__all__ = [
    "ForwardedHeadersMiddleware",
    "TrustedProxies",
    "parse_forwarded",
    "parse_trusted_proxies",
    "valid_host",
]
