"""Who the HTTP caller is behind a reverse proxy: ``X-Forwarded-For`` and ``X-Forwarded-Proto``
believed from the proxies of the ``trusted_proxies`` setting only.

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
builds (STOW-RS Retrieve URLs, and later the web face's redirects and cookies) say ``https``
behind a TLS-terminating proxy. Other forwarding headers (``Forwarded``, ``X-Forwarded-Host``)
are not read.

This runs as the outermost ASGI middleware, so everything below (authentication, the
principal's ``peer``, audit records) sees the resolved address; the web face (issue 10) sits
under it too. DIMSE has no forwarding headers: its peers are TCP peers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


class ForwardedHeadersMiddleware:
    """Resolves ``scope["client"]`` and ``scope["scheme"]`` as the module docs say."""

    def __init__(self, app: ASGIApp, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] in ("http", "websocket") and client and client[0] in self.trusted:
            forwarded_for: list[str] = []
            proto: str | None = None
            for name, value in scope.get("headers", ()):
                if name == b"x-forwarded-for":
                    forwarded_for.append(value.decode("latin-1"))
                elif name == b"x-forwarded-proto":
                    proto = value.decode("latin-1").split(",")[-1].strip().lower()
            if forwarded_for:
                address = self.trusted.client(client[0], forwarded_for)
                if address != client[0]:
                    scope["client"] = (address, 0)
            if proto in ("http", "https"):
                scope["scheme"] = proto if scope["type"] == "http" else proto.replace("http", "ws")
        await self.app(scope, receive, send)


__all__ = ["ForwardedHeadersMiddleware", "TrustedProxies", "parse_trusted_proxies"]
