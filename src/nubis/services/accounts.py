"""Users and API keys, as every front door manages them: the admin pages of the web face and
``nubis users`` / ``nubis apikeys`` call these, never the user table directly.

Each call is authorized by the Guard (ADMIN; a refusal is recorded as a Security Alert, Use of
Restricted Function) and each change is recorded as a Security Alert naming the user
(PS3.15 A.5.3.11: Security Roles Changed when what the user may do changed, User Security
Attributes Changed when its credentials did; ``audit_events.account_changed``), with the
principal who made it and its front door.

Tenants: an admin manages the users of its own tenant and their keys; a user of another tenant
is absent for it (404), as a study of another tenant is. Admins of the home tenant (and the
CLI, whose operator can read the data folder) run the archive (Action.OPERATE) and manage the
users of every tenant, creating users in any of them.

A removed user's browser sessions end with it, and so do a user's sessions when an admin sets
its password: a session names only the user, so one left open would otherwise come back to
life for a new user of the same name, or outlive the password it was opened with.
"""

from __future__ import annotations

import time

from nubis.errors import BadRequest, NotFound
from nubis.security import audit_events
from nubis.security.policy import Action, Principal, parse_roles
from nubis.security.sessions import SessionStore
from nubis.security.users import ApiKey, User, UserStore, check_tenant
from nubis.services.guard import Guard

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
# A hundred years: "never" is 0; anything longer would only overflow the expiry column.
MAX_KEY_DAYS = 36500
_MAX_LABEL = 200


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest(f"a password has at most {MAX_PASSWORD_LENGTH} characters")
    return password


class Accounts:
    """Users and API keys under the Guard (see the module docs)."""

    def __init__(
        self,
        users: UserStore,
        guard: Guard,
        sessions: SessionStore | None = None,
        *,
        api_key_days: int = 90,
    ) -> None:
        self.users = users
        self.guard = guard
        self.sessions = sessions
        self.api_key_days = api_key_days

    # ------------------------------------------------------------------ authorization
    def every_tenant(self, who: Principal) -> bool:
        """Whether ``who`` manages the users of every tenant (asked, not recorded)."""
        return self.guard.policy.decide(who, Action.ADMIN | Action.OPERATE).allowed

    def authorize(self, who: Principal, what: str) -> None:
        """Whether ``who`` may manage users at all (ADMIN); Forbidden (recorded) otherwise. A
        front door asks first when it has a form to check: a refusal then says nothing else."""
        self._authorize(who, what)

    def _authorize(self, who: Principal, what: str, *, tenant: str | None = None) -> None:
        """ADMIN, and OPERATE as well for a tenant other than ``who``'s; Forbidden (recorded)
        otherwise."""
        action = Action.ADMIN
        if tenant is not None and tenant != who.tenant:
            action |= Action.OPERATE
        self.guard.authorize(who, action, what)

    def _user(self, who: Principal, name: str, what: str) -> User:
        """The user ``name`` once ``who`` may manage it; NotFound when absent or out of scope."""
        self._authorize(who, what)
        user = self.users.get_user(name)
        if user is None or not self._manages(who, user):
            raise NotFound(f"no user {name}")
        return user

    def _manages(self, who: Principal, user: User | None) -> bool:
        return user is not None and (user.tenant == who.tenant or self.every_tenant(who))

    def _record(self, who: Principal, user: str, description: str, *, roles: bool) -> None:
        self.guard.record(
            audit_events.account_changed(
                who, user, roles=roles, description=description, request_id=who.request_id
            )
        )

    def _end_sessions(self, name: str) -> None:
        if self.sessions is not None:
            self.sessions.end_all(name)

    # ------------------------------------------------------------------ users
    def list_users(self, who: Principal) -> list[User]:
        """The users ``who`` manages, by name."""
        self._authorize(who, "list users")
        found = self.users.list_users()
        if self.every_tenant(who):
            return found
        return [u for u in found if u.tenant == who.tenant]

    def get_user(self, who: Principal, name: str) -> User:
        return self._user(who, name, f"show user {name}")

    def add_user(
        self,
        who: Principal,
        name: str,
        *,
        roles: frozenset[str] | str,
        tenant: str | None = None,
        password: str | None = None,
    ) -> User:
        """A new user of ``tenant`` (default: ``who``'s) with ``roles`` and, unless None, a
        password (without one the user signs in with API keys only)."""
        where = check_tenant(tenant or who.tenant)
        self._authorize(who, f"add user {name} to tenant {where}", tenant=where)
        role_set = _roles(roles)
        if password is not None:
            check_password(password)
        user = self.users.add_user(name, tenant=where, roles=role_set, password=password)
        self._record(
            who, name, f"user {name} added to tenant {where}: {_names(role_set)}", roles=True
        )
        return user

    def set_roles(self, who: Principal, name: str, roles: frozenset[str] | str) -> User:
        user = self._user(who, name, f"change the roles of {name}")
        role_set = _roles(roles)
        if name == who.id and "admin" in user.roles and "admin" not in role_set:
            raise BadRequest("an admin cannot take the admin role from itself: ask another admin")
        self.users.set_roles(name, role_set)
        self._record(
            who,
            name,
            f"roles of {name} changed from {_names(user.roles)} to {_names(role_set)}",
            roles=True,
        )
        return self.users.get_user(name) or user

    def set_password(self, who: Principal, name: str, password: str) -> None:
        self._user(who, name, f"set the password of {name}")
        self.users.set_password(name, check_password(password))
        self._end_sessions(name)
        self._record(who, name, f"password of {name} set", roles=False)

    def remove_user(self, who: Principal, name: str) -> None:
        """Remove the user with its API keys, grants and sessions."""
        self._user(who, name, f"remove user {name}")
        if name == who.id:
            raise BadRequest("an admin cannot remove itself: ask another admin")
        self.users.remove_user(name)
        self._end_sessions(name)
        self._record(who, name, f"user {name} removed", roles=True)

    # ------------------------------------------------------------------ API keys
    def list_api_keys(self, who: Principal, user: str | None = None) -> list[ApiKey]:
        """API keys (never their secrets) of ``user``, or of every user ``who`` manages."""
        if user is not None:
            self._user(who, user, f"list the API keys of {user}")
            return self.users.list_api_keys(user)
        names = {u.name for u in self.list_users(who)}
        return [k for k in self.users.list_api_keys() if k.user_name in names]

    def create_api_key(
        self, who: Principal, user: str, *, label: str = "", days: int | None = None
    ) -> tuple[ApiKey, str]:
        """A new key of ``user`` lasting ``days`` (None: api_key_days; 0: never expires): its
        record and the key itself, to be shown once (only its hash is kept)."""
        self._user(who, user, f"create an API key for {user}")
        lifetime = self.api_key_days if days is None else days
        if not 0 <= lifetime <= MAX_KEY_DAYS:
            raise BadRequest(f"an API key lasts 0 (never expires) to {MAX_KEY_DAYS} days")
        label = label.strip()
        if len(label) > _MAX_LABEL or not label.isprintable():
            raise BadRequest(f"a key's label is at most {_MAX_LABEL} printable characters")
        key, secret = self.users.create_api_key(
            user, label=label or f"made by {who.id}", expires_in_days=lifetime or None
        )
        self._record(who, user, f"API key {key.id} created for {user}", roles=False)
        return key, secret

    def revoke_api_key(self, who: Principal, key_id: str) -> ApiKey:
        """Revoke at once (servers look keys up at every request); NotFound for a key that is
        unknown, already revoked, or of a user ``who`` does not manage."""
        self._authorize(who, f"revoke API key {key_id}")
        key = next((k for k in self.users.list_api_keys() if k.id == key_id), None)
        owner = None if key is None else self.users.get_user(key.user_name)
        if key is None or key.revoked_at is not None or not self._manages(who, owner):
            raise NotFound(f"no active API key {key_id}")
        self.users.revoke_api_key(key_id)
        self._record(who, key.user_name, f"API key {key_id} revoked", roles=False)
        return ApiKey(
            key.id, key.user_name, key.label, key.created_at, key.expires_at, int(time.time())
        )


def _roles(roles: frozenset[str] | str) -> frozenset[str]:
    try:
        role_set = parse_roles(roles)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if not role_set:
        raise BadRequest("a user needs at least one role")
    return role_set


def _names(roles: frozenset[str]) -> str:
    return ",".join(sorted(roles))


__all__ = ["MIN_PASSWORD_LENGTH", "Accounts", "check_password"]
