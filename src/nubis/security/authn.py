"""Authentication: who is calling, for every front door.

HTTP callers present one of:

* ``Authorization: Basic`` with a local user's name and password (argon2id, see
  :mod:`nubis.security.users`), or with any name and an API key as the password (for clients
  that only do Basic);
* ``Authorization: Bearer <API key>`` or ``X-API-Key: <API key>`` (``nbk_...`` keys, and the
  ``admin_token`` setting);
* ``Authorization: Bearer <JWT>`` from the configured OpenID Connect issuer, checked with PyJWT
  against the issuer's JWKS: signature with an allowed asymmetric algorithm, ``iss``, ``aud``,
  ``exp`` (with ``oidc_leeway_seconds`` of clock skew), roles from ``oidc_roles_claim`` mapped
  by ``oidc_role_map``, tenant from ``oidc_tenant_claim``.

Anything else is :class:`~nubis.errors.Unauthorized` (HTTP 401). Password checks go through
the login throttle (:mod:`nubis.security.throttle`): while a user name or address is locked
they are refused with :class:`~nubis.errors.TooManyRequests` (429) before argon2.

DIMSE callers are identified by calling AE title and address (and, on the TLS port, by the
certificate the CA checked), and mapped to a tenant and role by :func:`dimse_principal`. The
CLI acts as a local administrator (:func:`cli_principal`): whoever runs it can read the data
folder anyway.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import pwd
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt

from nubis.config import Settings
from nubis.errors import Unauthorized
from nubis.security.policy import (
    ASSIGNABLE_ROLES,
    DEFAULT_TENANT,
    Principal,
    parse_roles,
    system_principal,
)
from nubis.security.sessions import Session
from nubis.security.throttle import LoginThrottle
from nubis.security.users import KEY_PREFIX, UserStore

log = logging.getLogger("nubis.security")

BREAK_GLASS_HEADER = "x-nubis-break-glass"
_BASIC_CACHE_SECONDS = 60.0
_BASIC_CACHE_MAX = 1024


class OidcVerifier:
    """Validates OIDC bearer tokens (JWT) of one issuer with its JWKS (PyJWT)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        algorithms: list[str],
        jwks_url: str = "",
        roles_claim: str = "roles",
        role_map: Mapping[str, str] | None = None,
        tenant_claim: str = "",
        default_tenant: str = DEFAULT_TENANT,
        leeway_seconds: int = 60,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.algorithms = algorithms
        self.roles_claim = roles_claim
        self.role_map = dict(role_map or {})
        self.tenant_claim = tenant_claim
        self.default_tenant = default_tenant
        self.leeway = leeway_seconds
        self._jwks_url = jwks_url
        self._client: jwt.PyJWKClient | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcVerifier | None:
        if not settings.oidc_issuer:
            return None
        role_map = {}
        for pair in settings.oidc_role_map.split(","):
            claim_value, sep, role = pair.partition("=")
            if sep:
                role_map[claim_value.strip()] = role.strip().lower()
        parse_roles(role_map.values())  # a typo in the map fails at start, not per request
        return cls(
            settings.oidc_issuer,
            settings.oidc_audience,
            algorithms=[a.strip() for a in settings.oidc_algorithms.split(",") if a.strip()],
            jwks_url=settings.oidc_jwks_url,
            roles_claim=settings.oidc_roles_claim,
            role_map=role_map,
            tenant_claim=settings.oidc_tenant_claim,
            default_tenant=settings.oidc_tenant,
            leeway_seconds=settings.oidc_leeway_seconds,
        )

    def _jwks(self) -> jwt.PyJWKClient:
        # Discovery is lazy: the archive may start before its identity provider does.
        with self._lock:
            if self._client is None:
                url = self._jwks_url or _discover_jwks_url(self.issuer)
                self._client = jwt.PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)
            return self._client

    def verify(self, token: str) -> Principal:
        """The principal a valid token stands for; Unauthorized naming why otherwise."""
        return self.principal(self.claims(token))

    def claims(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """The claims of a valid token for ``audience`` (default: oidc_audience; the browser
        sign-in checks its ID token for the client id); Unauthorized naming why otherwise."""
        try:
            key = self._jwks().get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=self.algorithms,
                audience=audience or self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the bearer token has expired") from None
        except jwt.PyJWKClientConnectionError as exc:
            log.error("OIDC key set of %s unavailable: %s", self.issuer, exc)
            raise Unauthorized("the identity provider's keys cannot be fetched") from None
        except (jwt.PyJWTError, OSError, ValueError) as exc:
            raise Unauthorized(f"the bearer token is not valid: {exc}") from None
        return claims

    def principal(self, claims: dict[str, Any]) -> Principal:
        """The principal of validated ``claims``: roles and tenant as the settings map them."""
        roles = self._roles(claims)
        tenant = str(_claim(claims, self.tenant_claim) or "") if self.tenant_claim else ""
        return Principal(
            f"oidc:{claims['sub']}",
            tenant or self.default_tenant,
            roles,
            auth_method="oidc",
        )

    def _roles(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = _claim(claims, self.roles_claim)
        if isinstance(raw, str):
            values = raw.replace(",", " ").split()
        elif isinstance(raw, list | tuple):
            values = [str(v) for v in raw]
        else:
            values = []
        if self.role_map:
            return frozenset(self.role_map[v] for v in values if v in self.role_map)
        # A token never carries a share link's internal roles, whatever its claim says.
        return frozenset(v.lower() for v in values if v.lower() in ASSIGNABLE_ROLES)


def _claim(claims: dict[str, Any], path: str) -> Any:
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _discover_jwks_url(issuer: str) -> str:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    with urllib.request.urlopen(url, timeout=10) as response:
        document = json.loads(response.read())
    jwks_uri = document.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise OSError(f"{url} names no jwks_uri")
    return jwks_uri


@dataclass
class _Cached:
    stamp: str  # UserStore.credential_stamp of the password hash that was verified
    until: float


class Authenticator:
    """Turns HTTP credentials into a :class:`Principal` (see the module docs)."""

    def __init__(
        self,
        users: UserStore,
        oidc: OidcVerifier | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.users = users
        self.oidc = oidc
        # Every password check goes through it (None only in unit tests of this class).
        self.throttle = throttle
        # argon2 costs tens of milliseconds by design; a client sending Basic credentials on
        # every request pays it once a minute, not per request. Keyed by a hash of the
        # credentials, never the password itself. What is cached is only that the password
        # matched a given hash: every request still reads the user's row (one indexed lookup,
        # as for an API key), so a removed user, a new password or new roles count at once,
        # in every worker process, whoever made the change (the CLI included).
        self._basic: dict[str, _Cached] = {}
        self._basic_lock = threading.Lock()

    def authenticate(self, headers: Mapping[str, str], *, peer: str | None = None) -> Principal:
        """The caller of a request with these (lower-case) headers from address ``peer``;
        Unauthorized otherwise, TooManyRequests while its password logins are locked."""
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "basic":
            principal = self._basic_auth(credentials, peer)
        elif scheme == "bearer" and credentials:
            principal = self._bearer(credentials)
        elif headers.get("x-api-key"):
            principal = self._api_key(headers["x-api-key"].strip())
        elif authorization:
            raise Unauthorized(f"unsupported authorization scheme {scheme[:20]!r}")
        else:
            raise Unauthorized("authentication required")
        return with_break_glass(principal, headers)

    def cached(self, headers: Mapping[str, str]) -> Principal | None:
        """:meth:`authenticate` for an API key this process has checked since the last change
        to any user or key, answered without the database (so without leaving the event
        loop); None for anything else, which :meth:`authenticate` then decides."""
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == "bearer" and credentials and not self._is_oidc(credentials):
            key = credentials
        elif not authorization and headers.get("x-api-key"):
            key = headers["x-api-key"].strip()
        else:
            return None  # Basic, OIDC tokens: their own paths (and their own caches)
        found = self.users.cached_api_key(key)
        if found is None:
            return None
        return with_break_glass(found[1].principal(auth_method="apikey"), headers)

    def session_principal(self, session: Session, headers: Mapping[str, str]) -> Principal:
        """The principal of a browser session: a local user as their row says now (removed:
        Unauthorized), anyone else (OIDC, a share link) as the session was given."""
        if session.local_user:
            user = self.users.get_user(session.subject)
            if user is None:
                raise Unauthorized("the session's user no longer exists: sign in again")
            principal = user.principal(auth_method="session")
        else:
            principal = Principal(
                session.subject,
                session.tenant,
                session.roles,
                auth_method=f"session-{session.auth_method}",
            )
        return with_break_glass(principal, headers)

    def _bearer(self, token: str) -> Principal:
        if self.oidc is not None and self._is_oidc(token):
            return self.oidc.verify(token)
        return self._api_key(token)

    def _is_oidc(self, token: str) -> bool:
        return self.oidc is not None and token.count(".") == 2 and not token.startswith(KEY_PREFIX)

    def _api_key(self, key: str) -> Principal:
        found = self.users.lookup_api_key(key)
        if found is None:
            raise Unauthorized("the API key is unknown, expired or revoked")
        return found[1].principal(auth_method="apikey")

    def _basic_auth(self, credentials: str, peer: str | None) -> Principal:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed Basic credentials") from None
        name, sep, password = decoded.partition(":")
        if not sep:
            raise Unauthorized("malformed Basic credentials")
        if password.startswith("nbk_"):
            return self._api_key(password)
        return self.login(name, password, peer=peer)

    def login(
        self, name: str, password: str, *, peer: str | None = None, front_door: str = "dicomweb"
    ) -> Principal:
        """Check a user's password from address ``peer``; Unauthorized (same reason whatever
        failed) otherwise, TooManyRequests without checking while the user name or the address
        is locked (nubis.security.throttle)."""
        cache_key = hashlib.sha256(f"{name}\0{password}".encode()).hexdigest()
        now = time.monotonic()
        with self._basic_lock:
            hit = self._basic.get(cache_key)
        if hit is not None and hit.until > now:
            current = self.users.credential_stamp(name)
            if current is not None and current[1] == hit.stamp:
                return current[0].principal(auth_method="basic")
            # Removed, or a new password: forget it, and check the password from scratch.
            with self._basic_lock:
                self._basic.pop(cache_key, None)
        if self.throttle is not None:
            self.throttle.check(name, peer)
        checked = self.users.check_password(name, password)
        if checked is None:
            if self.throttle is not None:
                self.throttle.failed(name, peer, front_door=front_door)
            raise Unauthorized("wrong user name or password")
        user, stamp = checked
        if self.throttle is not None:
            self.throttle.succeeded(name)
        with self._basic_lock:
            if len(self._basic) >= _BASIC_CACHE_MAX:
                self._basic.clear()
            self._basic[cache_key] = _Cached(stamp, now + _BASIC_CACHE_SECONDS)
        return user.principal(auth_method="basic")


def with_break_glass(principal: Principal, headers: Mapping[str, str]) -> Principal:
    """``principal`` asking for emergency access when the request carries a reason (the policy
    decides whether its roles may)."""
    reason = headers.get(BREAK_GLASS_HEADER, "").strip()
    if not reason:
        return principal
    # Printable, bounded: the reason goes into logs and audit records verbatim.
    clean = "".join(c if c.isprintable() else " " for c in reason)[:256]
    return replace(principal, break_glass=clean)


def anonymous_admin() -> Principal:
    """Everyone, when ``auth`` is off (loopback development only)."""
    return Principal("anonymous", DEFAULT_TENANT, frozenset({"admin"}), auth_method="none")


def cli_principal(tenant: str = DEFAULT_TENANT) -> Principal:
    """The operator of a CLI command: an administrator of ``tenant`` named by the OS account
    the process runs as (:func:`os_account`)."""
    return system_principal(os_account(), tenant=tenant, via="cli")


def os_account() -> str:
    """The account of the effective user id. Not ``getpass.getuser()``: that trusts $LOGNAME
    and $USER, which the caller sets as it likes, and an audit record must not."""
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return f"uid {uid}"


def cli_login() -> str | None:
    """Who is behind the CLI's account, as far as the host tells: the login user (the kernel's
    audit login uid, kept across su and sudo; a service account run by ``sudo -u`` names its
    human this way) and sudo's ``SUDO_USER``, a claim from the environment, labelled as one.
    None when neither differs from the account itself."""
    account, seen = os_account(), []
    try:
        login_uid = int(Path("/proc/self/loginuid").read_text())
    except (OSError, ValueError):
        login_uid = -1
    if 0 <= login_uid < 0xFFFFFFFF:  # 4294967295: no login session (daemons, containers)
        try:
            login = pwd.getpwuid(login_uid).pw_name
        except KeyError:
            login = f"uid {login_uid}"
        if login != account:
            seen.append(f"login {login}")
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and sudo_user != account:
        seen.append(f"SUDO_USER={sudo_user}")
    return ", ".join(seen) or None


def dimse_principal(
    settings: Settings,
    calling_ae: str,
    address: str,
    *,
    may_read: bool,
    certificate_subject: str | None = None,
) -> Principal:
    """The principal of a DIMSE association.

    ``dimse_principals`` maps ``AE`` or ``AE@host`` to ``tenant:role``; otherwise the caller is
    in ``dimse_tenant`` as a radiologist when the peer table lets it query or retrieve
    (``may_read``), else as a modality (store only). The peer table still decides per
    operation; this decides the tenant and what the services allow.
    """
    ae = calling_ae.strip()
    tenant, roles = settings.dimse_tenant, frozenset({"radiologist" if may_read else "modality"})
    for entry in settings.dimse_principals.split(","):
        who, sep, target = entry.strip().partition("=")
        if not sep:
            continue
        entry_ae, _, entry_host = who.strip().partition("@")
        if entry_ae.strip() != ae or (entry_host and entry_host.strip() != address):
            continue
        entry_tenant, _, role = target.strip().partition(":")
        tenant = entry_tenant.strip() or tenant
        if role.strip():
            roles = parse_roles(role)
        break
    subject = f"dimse:{ae}" + (f" ({certificate_subject})" if certificate_subject else "")
    return Principal(
        subject, tenant, roles, via="dimse", peer=address, ae_title=ae, auth_method="dimse"
    )


__all__ = [
    "BREAK_GLASS_HEADER",
    "Authenticator",
    "OidcVerifier",
    "anonymous_admin",
    "cli_login",
    "cli_principal",
    "dimse_principal",
    "os_account",
]
