"""Transport security of ``nubis serve``: HTTPS when a certificate is set, and the refusal to
expose an unprotected archive to the network.

Rules (HIPAA 164.312(e), transmission security):

* ``tls_cert`` set: HTTPS only, TLS 1.2 and 1.3. uvicorn builds an ``ssl.SSLContext`` with
  ``PROTOCOL_TLS_SERVER``, whose minimum version is TLS 1.2 on the Pythons nubis supports;
  :func:`check_transport` builds the same context at start and refuses to run if the minimum
  were ever lower (a patched OpenSSL policy, say), so the guarantee is checked, not assumed.
* A host that is not loopback needs both TLS and authentication; otherwise the archive
  refuses to start and says which is missing and why.
* Loopback may run plain HTTP (development on one machine); with ``auth`` off it warns.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.text import Text

from nubis.config import Settings


class TransportError(Exception):
    """The settings would expose the archive unprotected, or TLS cannot be set up."""


@dataclass(frozen=True)
class Transport:
    scheme: str
    uvicorn_options: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()


def is_loopback_host(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def tls_context(cert: str, key: str | None) -> ssl.SSLContext:
    """The server context uvicorn will build, loaded once to fail early on bad files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key or None)
    return context


def check_transport(settings: Settings) -> Transport:
    """How to serve HTTP with these settings; TransportError says why it must not start."""
    loopback = is_loopback_host(settings.host)
    tls = bool(settings.tls_cert)
    if not loopback and not (tls and settings.auth):
        missing = [
            what
            for what, ok in (
                ("TLS (set tls_cert and tls_key)", tls),
                ("authentication (auth=true)", settings.auth),
            )
            if not ok
        ]
        raise TransportError(
            f"host {settings.host} is not a loopback address, and {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} off: passwords, API keys and patient data "
            "would cross the network unprotected. Configure them, or bind to 127.0.0.1 for "
            "local development."
        )
    if not loopback and not settings.audit_trail:
        raise TransportError(
            f"host {settings.host} is not a loopback address, and the audit trail is off "
            "(audit_trail=false): accesses to patient data would go unrecorded. Turn it on, or "
            "bind to 127.0.0.1 to run a benchmark."
        )
    warnings: list[str] = []
    if not settings.audit_trail:
        warnings.append("the audit trail is off (audit_trail=false): no access is recorded")
    if not settings.auth:
        warnings.append(
            "authentication is off (auth=false): every local caller is an administrator"
        )
    if not tls:
        return Transport("http", warnings=tuple(warnings))
    try:
        context = tls_context(settings.tls_cert, settings.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot load tls_cert/tls_key: {exc}") from None
    # What uvicorn will build: refuse to run if its default ever allowed TLS 1.0 or 1.1.
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if default.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise TransportError(
            f"this Python/OpenSSL allows {default.minimum_version.name} by default; nubis "
            "serves TLS 1.2 and 1.3 only"
        )
    del context
    options = {
        "ssl_certfile": settings.tls_cert,
        "ssl_keyfile": settings.tls_key or None,
        "ssl_version": ssl.PROTOCOL_TLS_SERVER,
    }
    return Transport("https", options, tuple(warnings))


def print_first_login(console: Console, url: str, key: str) -> None:
    """Print the first admin key once, as Jupyter prints its token (only its hash is kept)."""
    console.print(
        Text.assemble(
            "\n",
            ("No users yet.", "bold"),
            " An admin API key was made for user 'admin' (valid 30 days, shown only now, stored "
            "as a hash):\n\n"
            f"    {key}\n\n"
            "Use it as a bearer token, e.g.\n"
            f'    curl -H "Authorization: Bearer {key}" {url}/dicom-web/studies\n\n'
            "Then add users with `nubis users add NAME --role ROLE` and log in with "
            f"`curl -u NAME -X POST {url}/-/login`.\n",
        ),
        highlight=False,
        soft_wrap=True,
    )


__all__ = ["Transport", "TransportError", "check_transport", "print_first_login"]
