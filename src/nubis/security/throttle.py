"""Login throttling: failed password checks counted per user name and per source address, with
lockouts that double, kept in the index so they hold on every worker process and node.

A password check costs about 120 ms of argon2 and an audit record (User Authentication, minor
failure) when it fails; a client guessing passwords spends the archive's CPU and fills its audit
trail. So every password check, by every front door that takes passwords (HTTP Basic on any
request, ``POST /-/login``, and the web face's login page, issue 10), goes through
:class:`LoginThrottle`:

* :meth:`~LoginThrottle.check` first: a locked user name or address is refused at once with
  :class:`~nubis.errors.TooManyRequests` (429, ``Retry-After``), before argon2 and without an
  audit record, so a locked attempt costs a dictionary lookup (after the first one in a
  process, which reads the index).
* :meth:`~LoginThrottle.failed` after a wrong password: ``max_failures`` failures of one key
  within ``window_seconds`` lock it for ``lockout_seconds``, doubled at each further lockout of
  that key up to ``max_lockout_seconds``; a key quiet for that long starts again from the
  first step. The start of a lockout is handed to ``on_lockout`` (the archive logs it at
  WARNING and records a Security Alert); nothing is recorded while it lasts.
* :meth:`~LoginThrottle.succeeded` after a right one: the user name's count and escalation start
  again. The address's do not: one good account must not let an address guess others.

Users are counted per name (a distributed guess at one account), addresses per address (one
client trying many names; behind a reverse proxy that is the forwarded address only with
``trusted_proxies`` set, nubis.web.proxies). A lockout of a user name refuses its passwords
only: API keys and OIDC tokens still work, so an attacker who locks an account out does not
lock its owner's running clients out. A Basic credential verified in the last minute (the
argon2 cache, nubis.security.authn) is not checked again, so it is not throttled either.

Where the counts live: the index table ``login_throttle`` (one row per key). Per-process counts
would give an attacker ``workers x nodes`` times the attempts, and a lockout in one worker
would not stop the next connection, which the kernel may hand to another. The cost is one
indexed read before each argon2 check and one write after each failure, small beside argon2.
Concurrent attempts in flight when a key locks may still be checked (at most one per
concurrent connection).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from sqlalchemy import Connection, delete, insert, select, update

from nubis.errors import TooManyRequests
from nubis.index.database import Index
from nubis.index.schema import login_throttle

__all__ = ["Lockout", "LoginThrottle", "ThrottlePolicy"]

_KEY_CHARS = 255
# Failure counts take turns across nodes (PostgreSQL advisory lock; SQLite has one writer):
# two nodes must not both insert the first row of a key. Only failures write, so this is rare.
THROTTLE_LOCK = 0x6E75_7401
_CACHE_MAX = 10_000
_PRUNE_EVERY_SECONDS = 600


@dataclass(frozen=True)
class ThrottlePolicy:
    """The login throttle's settings; a ``max_failures`` of 0 turns that kind of key off."""

    max_failures_per_user: int = 10
    max_failures_per_address: int = 30
    window_seconds: int = 900
    lockout_seconds: int = 60
    max_lockout_seconds: int = 3600

    def limit(self, kind: str) -> int:
        return self.max_failures_per_user if kind == "user" else self.max_failures_per_address

    def lockout(self, earlier_lockouts: int) -> int:
        """Seconds of the next lockout of a key already locked ``earlier_lockouts`` times."""
        return min(self.lockout_seconds * 2 ** min(earlier_lockouts, 32), self.max_lockout_seconds)


@dataclass(frozen=True)
class Lockout:
    """A lockout that has just started: of a user name (``kind == "user"``) or an address."""

    kind: str
    subject: str
    seconds: int
    failures: int
    user: str
    address: str | None
    front_door: str


class LoginThrottle:
    """See the module docs. ``clock`` is seconds since the epoch (tests move it)."""

    def __init__(
        self,
        index: Index,
        policy: ThrottlePolicy,
        *,
        on_lockout: Callable[[Lockout], None] = lambda lockout: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.policy = policy
        self.on_lockout = on_lockout
        self.clock = clock
        # Lockouts this process has seen, so a locked key costs no index read until it ends.
        self._locked: dict[str, float] = {}
        self._lock = threading.Lock()
        self._next_prune = 0.0

    def _keys(self, user: str, address: str | None) -> list[tuple[str, str, str]]:
        """(kind, subject, row key) of the keys an attempt counts against."""
        keys = []
        if self.policy.max_failures_per_user > 0:
            keys.append(("user", user, _row_key("user", user)))
        if address and self.policy.max_failures_per_address > 0:
            keys.append(("address", address, _row_key("address", address)))
        return keys

    def check(self, user: str, address: str | None) -> None:
        """TooManyRequests if the user name or the address is locked; else nothing."""
        keys = [key for _, _, key in self._keys(user, address)]
        if not keys:
            return
        now = self.clock()
        with self._lock:
            until = max((self._locked.get(key, 0.0) for key in keys), default=0.0)
        if until <= now:
            with self.index.reading() as conn:
                rows = conn.execute(
                    select(login_throttle.c.key, login_throttle.c.locked_until).where(
                        login_throttle.c.key.in_(keys)
                    )
                ).all()
            locked = {key: ms / 1000 for key, ms in rows if ms / 1000 > now}
            if not locked:
                return
            self._remember(locked)
            until = max(locked.values())
        raise TooManyRequests(
            "too many failed logins from this address or for this user: try again later",
            retry_after=max(1, math.ceil(until - now)),
        )

    def failed(self, user: str, address: str | None, *, front_door: str) -> list[Lockout]:
        """Count a wrong password; the lockouts it starts (also handed to ``on_lockout``)."""
        keys = self._keys(user, address)
        if not keys:
            return []
        now = self.clock()
        attempt = Lockout("", "", 0, 0, user, address, front_door)
        started = self.index.write(lambda conn: self._count(conn, keys, now, attempt))
        self._remember({key: until for key, until, _ in started})
        self._prune(now)
        lockouts = [lockout for _, _, lockout in started]
        for lockout in lockouts:
            self.on_lockout(lockout)
        return lockouts

    def succeeded(self, user: str) -> None:
        """A right password: the user name's count and escalation start again."""
        if self.policy.max_failures_per_user <= 0:
            return
        key = _row_key("user", user)
        # Read first: most logins have no failures behind them, and a read costs no commit.
        with self.index.reading() as conn:
            if conn.scalar(select(login_throttle.c.key).where(login_throttle.c.key == key)) is None:
                return
        self.index.write(
            lambda conn: conn.execute(delete(login_throttle).where(login_throttle.c.key == key))
        )

    def _count(
        self,
        conn: Connection,
        keys: list[tuple[str, str, str]],
        now: float,
        attempt: Lockout,
    ) -> list[tuple[str, float, Lockout]]:
        Index.serialize(conn, THROTTLE_LOCK)
        policy, now_ms = self.policy, int(now * 1000)
        table = login_throttle
        rows = {
            row.key: row
            for row in conn.execute(select(table).where(table.c.key.in_([k for _, _, k in keys])))
        }
        started = []
        for kind, subject, key in keys:
            row = rows.get(key)
            failures, window_start, lockouts = 0, now_ms, 0
            if row is not None:
                if row.locked_until > now_ms:
                    continue  # locked meanwhile by a concurrent attempt: nothing to count
                quiet_ms = (policy.window_seconds + policy.max_lockout_seconds) * 1000
                lockouts = row.lockouts if now_ms - row.updated_at < quiet_ms else 0
                if now_ms - row.window_start < policy.window_seconds * 1000:
                    failures, window_start = row.failures, row.window_start
            failures += 1
            locked_until = 0
            if failures >= policy.limit(kind):
                seconds = policy.lockout(lockouts)
                locked_until = now_ms + seconds * 1000
                lockout = replace(
                    attempt, kind=kind, subject=subject, seconds=seconds, failures=failures
                )
                started.append((key, locked_until / 1000, lockout))
                failures, window_start, lockouts = 0, now_ms, lockouts + 1
            values = {
                "failures": failures,
                "window_start": window_start,
                "locked_until": locked_until,
                "lockouts": lockouts,
                "updated_at": now_ms,
            }
            if row is None:
                conn.execute(insert(table).values(key=key, **values))
            else:
                conn.execute(update(table).where(table.c.key == key).values(**values))
        return started

    def _remember(self, locked: dict[str, float]) -> None:
        with self._lock:
            if len(self._locked) + len(locked) > _CACHE_MAX:
                now = self.clock()
                self._locked = {k: u for k, u in self._locked.items() if u > now}
            self._locked.update(locked)

    def _prune(self, now: float) -> None:
        """Drop rows idle for longer than any of their state can matter (now and then)."""
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_EVERY_SECONDS
        idle_ms = (self.policy.window_seconds + 2 * self.policy.max_lockout_seconds) * 1000
        horizon = int(now * 1000) - idle_ms
        self.index.write(
            lambda conn: conn.execute(
                delete(login_throttle).where(login_throttle.c.updated_at < horizon)
            )
        )


def _row_key(kind: str, subject: str) -> str:
    """``user:NAME`` / ``address:IP``; a subject too long for the column by its SHA-256 (a
    claimed user name is whatever a client sent)."""
    key = f"{kind}:{subject}"
    if len(key) <= _KEY_CHARS:
        return key
    return f"{kind}:sha256:{hashlib.sha256(subject.encode('utf-8', 'replace')).hexdigest()}"
