"""Local users, API keys and grants, kept in the index (tables ``users``, ``api_keys``,
``grants``; migration 0003).

Passwords are argon2id hashes (argon2-cffi's defaults, RFC 9106's second recommended
profile). An API key is ``nbk_<id>_<secret>`` with 256 bits of secret; only the SHA-256 of the
whole key is stored: a key is already a random value, so a slow hash would add nothing but
latency to every request, while a stolen index still yields no working key. A key is shown
once, when created, and may expire and be revoked. The key id (not secret) names the key in
listings and revocations.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import ColumnElement, Connection, bindparam, delete, insert, select, update

from nubis.errors import BadRequest, NotFound
from nubis.index.database import Index
from nubis.index.schema import api_keys, grants, users
from nubis.security.policy import DEFAULT_TENANT, Principal, parse_roles

KEY_PREFIX = "nbk_"
ADMIN_TOKEN_KEY_ID = "admin-token"  # the key row NUBIS_ADMIN_TOKEN maintains
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_hasher = PasswordHasher()
# Verified against when the user does not exist, so an unknown name costs as much as a wrong
# password and login timing does not tell which user names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class User:
    name: str
    tenant: str
    roles: frozenset[str]
    has_password: bool
    created_at: int

    def principal(self, *, via: str = "dicomweb", auth_method: str = "") -> Principal:
        return Principal(self.name, self.tenant, self.roles, via=via, auth_method=auth_method)


@dataclass(frozen=True)
class ApiKey:
    id: str
    user_name: str
    label: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None

    def usable(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and time.time() >= self.expires_at:
            return "expired"
        return "active"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key_secret(key_id: str) -> str:
    return f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise BadRequest(
            f"user name {name[:40]!r}: 1-128 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_tenant(tenant: str) -> str:
    if not _TENANT.fullmatch(tenant):
        raise BadRequest(f"tenant {tenant[:40]!r}: 1-64 letters, digits, '.', '_' or '-'")
    return tenant


def _stamp(password_hash: str) -> str:
    # A digest, so a cache holding stamps holds nothing to attack a password with.
    return hashlib.sha256(password_hash.encode()).hexdigest()


def _user(row: Sequence[Any]) -> User:
    name, tenant, roles, password_hash, created_at = row
    return User(name, tenant, parse_roles(roles), password_hash is not None, created_at)


_USER_COLUMNS = (
    users.c.name,
    users.c.tenant,
    users.c.roles,
    users.c.password_hash,
    users.c.created_at,
)
_KEY_COLUMNS = (
    api_keys.c.id,
    api_keys.c.user_name,
    api_keys.c.label,
    api_keys.c.created_at,
    api_keys.c.expires_at,
    api_keys.c.revoked_at,
)
# Built once: every API-key request runs it, and building a statement costs more than the
# lookup itself.
_KEY_LOOKUP = (
    select(*_KEY_COLUMNS, api_keys.c.key_hash, *_USER_COLUMNS)
    .select_from(api_keys.join(users, users.c.name == api_keys.c.user_name))
    .where(api_keys.c.key_hash == bindparam("digest"))
)


class UserStore:
    """Users, API keys and grants over an open :class:`~nubis.index.database.Index`."""

    def __init__(self, index: Index) -> None:
        self.index = index

    # ------------------------------------------------------------------ users
    def add_user(
        self,
        name: str,
        *,
        tenant: str = DEFAULT_TENANT,
        roles: frozenset[str] | str,
        password: str | None = None,
    ) -> User:
        check_name(name)
        check_tenant(tenant)
        role_set = parse_roles(roles)
        if not role_set:
            raise BadRequest("a user needs at least one role")
        password_hash = _hasher.hash(password) if password else None
        now = int(time.time())

        def job(conn: Connection) -> None:
            if conn.execute(select(users.c.name).where(users.c.name == name)).first():
                raise BadRequest(f"user {name} already exists")
            conn.execute(
                insert(users).values(
                    name=name,
                    tenant=tenant,
                    roles=",".join(sorted(role_set)),
                    password_hash=password_hash,
                    created_at=now,
                )
            )

        self.index.write(job)
        return User(name, tenant, role_set, password_hash is not None, now)

    def set_password(self, name: str, password: str) -> None:
        password_hash = _hasher.hash(password)
        self._update_user(name, password_hash=password_hash)

    def set_roles(self, name: str, roles: frozenset[str]) -> None:
        self._update_user(name, roles=",".join(sorted(parse_roles(roles))))

    def _update_user(self, name: str, **values: object) -> None:
        def job(conn: Connection) -> None:
            done = conn.execute(update(users).where(users.c.name == name).values(**values))
            if not done.rowcount:
                raise NotFound(f"no user {name}")

        self.index.write(job)

    def remove_user(self, name: str) -> None:
        """Remove the user with its API keys and grants."""

        def job(conn: Connection) -> None:
            if not conn.execute(delete(users).where(users.c.name == name)).rowcount:
                raise NotFound(f"no user {name}")
            conn.execute(delete(api_keys).where(api_keys.c.user_name == name))
            conn.execute(delete(grants).where(grants.c.subject == name))

        self.index.write(job)

    def get_user(self, name: str) -> User | None:
        with self.index.reading() as conn:
            row = conn.execute(select(*_USER_COLUMNS).where(users.c.name == name)).first()
        return _user(row) if row else None

    def list_users(self) -> list[User]:
        with self.index.reading() as conn:
            rows = conn.execute(select(*_USER_COLUMNS).order_by(users.c.name)).all()
        return [_user(r) for r in rows]

    def count_users(self) -> int:
        with self.index.reading() as conn:
            return len(conn.execute(select(users.c.name).limit(1)).all())

    def verify_password(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs; None otherwise, in about the same time whether
        or not the user exists."""
        found = self.check_password(name, password)
        return found[0] if found is not None else None

    def check_password(self, name: str, password: str) -> tuple[User, str] | None:
        """:meth:`verify_password`, with the :meth:`credential_stamp` of the hash that matched
        (not of one read afterwards, which a concurrent change could have replaced)."""
        with self.index.reading() as conn:
            row = conn.execute(select(*_USER_COLUMNS).where(users.c.name == name)).first()
        stored = row[3] if row is not None and row[3] else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None or not row[3]:
            return None
        if _hasher.check_needs_rehash(stored):
            stored = _hasher.hash(password)
            self._update_user(name, password_hash=stored)
        return _user(row), _stamp(stored)

    def credential_stamp(self, name: str) -> tuple[User, str] | None:
        """The user as it is now and a stamp of its password hash, in one indexed read; None
        for a missing user or one without a password. A password checked earlier is still
        this user's while the stamp is the same: a new password (a fresh salt) or a removed
        and re-added user changes it."""
        with self.index.reading() as conn:
            row = conn.execute(select(*_USER_COLUMNS).where(users.c.name == name)).first()
        if row is None or not row[3]:
            return None
        return _user(row), _stamp(row[3])

    # ------------------------------------------------------------------ API keys
    def create_api_key(
        self,
        user_name: str,
        *,
        label: str = "",
        expires_in_days: float | None = 90,
        key_id: str | None = None,
        secret: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key for ``user_name``: its record and the key itself (shown once, never
        stored). ``expires_in_days`` None: the key does not expire."""
        key_id = key_id or secrets.token_hex(6)
        secret = secret or new_api_key_secret(key_id)
        now = int(time.time())
        expires = None if expires_in_days is None else int(now + expires_in_days * 86400)

        def job(conn: Connection) -> None:
            if not conn.execute(select(users.c.name).where(users.c.name == user_name)).first():
                raise NotFound(f"no user {user_name}")
            conn.execute(delete(api_keys).where(api_keys.c.id == key_id))
            conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    key_hash=key_hash(secret),
                    user_name=user_name,
                    label=label,
                    created_at=now,
                    expires_at=expires,
                    revoked_at=None,
                )
            )

        self.index.write(job)
        return ApiKey(key_id, user_name, label, now, expires, None), secret

    def list_api_keys(self, user_name: str | None = None) -> list[ApiKey]:
        stmt = select(*_KEY_COLUMNS).order_by(api_keys.c.user_name, api_keys.c.created_at)
        if user_name is not None:
            stmt = stmt.where(api_keys.c.user_name == user_name)
        with self.index.reading() as conn:
            return [ApiKey(*row) for row in conn.execute(stmt).all()]

    def revoke_api_key(self, key_id: str) -> None:
        now = int(time.time())

        def job(conn: Connection) -> None:
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            if not done.rowcount:
                raise NotFound(f"no active API key {key_id}")

        self.index.write(job)

    def lookup_api_key(self, key: str) -> tuple[ApiKey, User] | None:
        """The key's record and user if ``key`` is a usable key (known, not expired, not
        revoked, its user still there); None otherwise."""
        digest = key_hash(key)
        with self.index.reading() as conn:
            row = conn.execute(_KEY_LOOKUP, {"digest": digest}).first()
        # The row was found by its hash; comparing again in constant time costs nothing and
        # keeps the decision independent of how the database compares strings.
        if row is None or not hmac.compare_digest(row[6], digest):
            return None
        record = ApiKey(*row[:6])
        if not record.usable(time.time()):
            return None
        return record, _user(row[7:])

    def ensure_admin_token(self, token: str) -> None:
        """Make ``token`` (NUBIS_ADMIN_TOKEN) a non-expiring admin key of user ``admin``, or,
        with an empty token, revoke the key an earlier token made."""
        if not token:
            for key in self.list_api_keys("admin"):
                if key.id == ADMIN_TOKEN_KEY_ID and key.revoked_at is None:
                    self.revoke_api_key(key.id)
            return
        if self.get_user("admin") is None:
            self.add_user("admin", tenant=DEFAULT_TENANT, roles="admin")
        self.create_api_key(
            "admin",
            label="NUBIS_ADMIN_TOKEN",
            expires_in_days=None,
            key_id=ADMIN_TOKEN_KEY_ID,
            secret=token,
        )

    def bootstrap(self) -> str | None:
        """On a fresh archive (no users), create user ``admin`` with a new 30-day admin API key
        and return the key, for the console to print once (as Jupyter prints its token)."""
        if self.count_users():
            return None
        self.add_user("admin", tenant=DEFAULT_TENANT, roles="admin")
        _, secret = self.create_api_key("admin", label="first start", expires_in_days=30)
        return secret

    # ------------------------------------------------------------------ grants
    def grant(
        self,
        subject: str,
        *,
        tenant: str,
        patient_id: str | None = None,
        study_uid: str | None = None,
        also: Callable[[Connection], object] | None = None,
    ) -> None:
        """Let ``subject`` see a patient's studies or a study; ``also`` runs in the same
        transaction (the change's audit record: both commit or neither does)."""
        if (patient_id is None) == (study_uid is None):
            raise BadRequest("a grant names either a patient ID or a Study Instance UID")
        now = int(time.time())

        def job(conn: Connection) -> None:
            existing = conn.execute(
                select(grants.c.id).where(*_grant_match(subject, tenant, patient_id, study_uid))
            ).first()
            if existing is None:
                conn.execute(
                    insert(grants).values(
                        subject=subject,
                        tenant=tenant,
                        patient_id=patient_id,
                        study_uid=study_uid,
                        created_at=now,
                    )
                )
            if also is not None:
                also(conn)

        self.index.write(job)

    def revoke_grant(
        self,
        subject: str,
        *,
        tenant: str,
        patient_id: str | None = None,
        study_uid: str | None = None,
        also: Callable[[Connection], object] | None = None,
    ) -> None:
        def job(conn: Connection) -> None:
            done = conn.execute(
                delete(grants).where(*_grant_match(subject, tenant, patient_id, study_uid))
            )
            if not done.rowcount:
                raise NotFound(f"no such grant for {subject}")
            if also is not None:
                also(conn)

        self.index.write(job)

    def list_grants(
        self, subject: str | None = None, *, tenant: str | None = None, study_uid: str | None = None
    ) -> list[tuple[str, str, str, str]]:
        """(subject, tenant, "patient"|"study"|"series", id) rows; a series grant's id is
        ``STUDY/SERIES``."""
        stmt = select(
            grants.c.subject,
            grants.c.tenant,
            grants.c.patient_id,
            grants.c.study_uid,
            grants.c.series_uid,
        ).order_by(grants.c.subject, grants.c.id)
        if subject is not None:
            stmt = stmt.where(grants.c.subject == subject)
        if tenant is not None:
            stmt = stmt.where(grants.c.tenant == tenant)
        if study_uid is not None:
            stmt = stmt.where(grants.c.study_uid == study_uid)
        with self.index.reading() as conn:
            rows = conn.execute(stmt).all()
        return [_grant_row(*row) for row in rows]


def _grant_row(
    subject: str, tenant: str, patient_id: str | None, study: str | None, series_uid: str | None
) -> tuple[str, str, str, str]:
    if patient_id is not None:
        return subject, tenant, "patient", patient_id
    if series_uid is not None:
        return subject, tenant, "series", f"{study}/{series_uid}"
    return subject, tenant, "study", str(study)


def _grant_match(
    subject: str, tenant: str, patient_id: str | None, study_uid: str | None
) -> list[ColumnElement[bool]]:
    # Users' grants name a whole patient or study; series grants are share links' own.
    return [
        grants.c.subject == subject,
        grants.c.tenant == tenant,
        grants.c.patient_id.is_(None) if patient_id is None else grants.c.patient_id == patient_id,
        grants.c.study_uid.is_(None) if study_uid is None else grants.c.study_uid == study_uid,
        grants.c.series_uid.is_(None),
    ]


__all__ = ["ADMIN_TOKEN_KEY_ID", "KEY_PREFIX", "ApiKey", "User", "UserStore", "key_hash"]
