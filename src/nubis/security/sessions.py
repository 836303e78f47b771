"""Browser sessions of the web face, kept in the index (table ``web_sessions``, migration 0009).

A session is a random 256-bit token in an ``HttpOnly`` cookie; only its SHA-256 is stored, so
a stolen index holds no working session. A session ends at the first of: its absolute expiry
(``session_max_hours`` after sign-in, or a share link's own expiry), ``session_idle_minutes``
without a request, sign-out, the removal of its user, or the revocation of its share link.

A session does not freeze what its principal may do. A local user's session names only the
user: roles and tenant are read from the user's row at every request, as for an API key, so
new roles, a removed user or a new tenant count at the next request. Only sessions whose
principal has no row (an OIDC subject, a share link) carry the roles and tenant they were
given when they started.

Every session also holds a CSRF token, sent by the pages in their forms and by their scripts in
``X-CSRF-Token``; a cookie-authenticated request that changes anything must present it
(web/auth.py).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from nubis.index.database import Index
from nubis.index.schema import web_sessions
from nubis.security.policy import Principal

# The last request is written at most this often per session: a session is not one index
# write per page view, and idle expiry is exact to this much.
_TOUCH_EVERY_MS = 60_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    """A live session as a request sees it."""

    token_hash: str
    csrf_token: str
    subject: str
    tenant: str
    # Empty for a local user (read from the user's row); the given roles otherwise.
    roles: frozenset[str]
    auth_method: str  # password, oidc, share
    created_at: int
    expires_at: int

    @property
    def local_user(self) -> bool:
        return self.auth_method == "password"

    def csrf_matches(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(presented or "", self.csrf_token)


class SessionStore:
    """Start, find and end browser sessions (see the module docs)."""

    def __init__(self, index: Index, *, idle_seconds: int, max_seconds: int) -> None:
        self.index = index
        self.idle_ms = idle_seconds * 1000
        self.max_ms = max_seconds * 1000

    def start(
        self,
        principal: Principal,
        *,
        auth_method: str,
        peer: str | None,
        expires_at_ms: int | None = None,
    ) -> tuple[str, Session]:
        """A new session for ``principal``: (the cookie's token, shown only now, the session).

        ``expires_at_ms`` shortens the absolute expiry (a share link's own end); it never
        lengthens it past ``session_max_hours``.
        """
        now = _now_ms()
        token = secrets.token_urlsafe(32)
        expires = now + self.max_ms
        if expires_at_ms is not None:
            expires = min(expires, expires_at_ms)
        roles = "" if auth_method == "password" else ",".join(sorted(principal.roles))
        row = {
            "token_hash": token_hash(token),
            "csrf_token": secrets.token_urlsafe(32),
            "subject": principal.id,
            "tenant": principal.tenant,
            "roles": roles,
            "auth_method": auth_method,
            "peer": (principal.peer or "")[:64] or None,
            "created_at": now,
            "last_seen_at": now,
            "expires_at": expires,
        }

        def job(conn: Connection) -> None:
            # Ended sessions go when new ones start: no job needed, and the table stays the
            # size of the sessions that could still be used.
            conn.execute(
                delete(web_sessions).where(
                    (web_sessions.c.expires_at <= now)
                    | (web_sessions.c.last_seen_at <= now - self.idle_ms)
                )
            )
            conn.execute(insert(web_sessions).values(**row))

        self.index.write(job)
        return token, _session(row)

    def find(self, token: str) -> Session | None:
        """The live session of a cookie's token, or None (unknown, ended, idle too long)."""
        if not token or len(token) > 128:
            return None
        digest = token_hash(token)
        with self.index.reading() as conn:
            row = conn.execute(
                select(web_sessions).where(web_sessions.c.token_hash == digest)
            ).first()
        if row is None:
            return None
        now = _now_ms()
        if row.expires_at <= now or row.last_seen_at <= now - self.idle_ms:
            return None
        if now - row.last_seen_at >= _TOUCH_EVERY_MS:
            self.index.write(
                lambda conn: conn.execute(
                    update(web_sessions)
                    .where(web_sessions.c.token_hash == digest)
                    .values(last_seen_at=now)
                )
            )
        return _session(row._mapping)

    def end(self, token_hash_value: str) -> None:
        """Sign out: the session is gone for every worker and node at once."""
        self.index.write(
            lambda conn: conn.execute(
                delete(web_sessions).where(web_sessions.c.token_hash == token_hash_value)
            )
        )

    def end_all(self, subject: str) -> int:
        """End every session of ``subject`` (a removed user, a revoked share link)."""
        return int(
            self.index.write(
                lambda conn: (
                    conn.execute(
                        delete(web_sessions).where(web_sessions.c.subject == subject)
                    ).rowcount
                )
            )
        )


def _session(row: Mapping[Any, Any]) -> Session:
    """A session from its row (a row's mapping, or the dict it was inserted from)."""
    get = row.__getitem__
    roles = get("roles")
    return Session(
        token_hash=get("token_hash"),
        csrf_token=get("csrf_token"),
        subject=get("subject"),
        tenant=get("tenant"),
        roles=frozenset(r for r in roles.split(",") if r),
        auth_method=get("auth_method"),
        created_at=get("created_at"),
        expires_at=get("expires_at"),
    )


__all__ = ["Session", "SessionStore", "token_hash"]
