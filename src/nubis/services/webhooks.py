"""Webhook subscriptions, for admins (``nubis webhooks``, ``/webhooks``; docs/events.md).

A subscription names a receiver URL, the role it acts with in its tenant and its filters: event
types (the change feed's actions), modalities and a QIDO-RS study query. It is delivered, by the
``webhooks`` job (nubis.events.delivery), the change-feed entries its principal
``webhook:<name>`` may see: a referrer-role subscription only the studies granted to
``webhook:<name>``, exactly as a referrer's own feed. Managing subscriptions is the ADMIN
action in the admin's tenant (another tenant's needs OPERATE), recorded as Security Alert,
Security Configuration (PS3.15 A.5.3.11) in the change's own commit.

The signing secret is made here, shown once, and kept encrypted (nubis.crypto.webhook_secrets).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import Connection

from nubis.crypto.webhook_secrets import SecretBox, new_secret
from nubis.errors import BadRequest, Conflict, NotFound
from nubis.index import feed_sql
from nubis.index import webhooks_sql as sql
from nubis.index.database import Index
from nubis.index.webhooks_sql import DeadLetter, Subscription
from nubis.model.query import Level, Query, parse_qido
from nubis.security import audit_events
from nubis.security.policy import ASSIGNABLE_ROLES, Action, Principal
from nubis.services.guard import Guard

__all__ = [
    "Filters",
    "WebhookService",
    "match_query",
    "parse_filters",
    "subscriber",
]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_MODALITY = re.compile(r"[A-Z0-9_]{1,16}\Z")
# A match is a study-level QIDO-RS query: matching keys only, no paging or field selection.
_NOT_MATCHING = frozenset({"limit", "offset", "includefield", "fuzzymatching"})


@dataclass(frozen=True)
class Filters:
    actions: tuple[str, ...]
    modalities: tuple[str, ...]
    match: str


def parse_filters(events: Sequence[str], modalities: Sequence[str], match: str) -> Filters:
    """Checked filters; BadRequest naming what is wrong."""
    actions = tuple(dict.fromkeys(e.strip().lower() for e in events if e.strip()))
    unknown = [a for a in actions if a not in feed_sql.ACTIONS]
    if unknown:
        raise BadRequest(
            f"unknown event type(s) {', '.join(unknown)}; the types are "
            f"{', '.join(feed_sql.ACTIONS)}"
        )
    wanted = tuple(dict.fromkeys(m.strip().upper() for m in modalities if m.strip()))
    bad = [m for m in wanted if not _MODALITY.match(m)]
    if bad:
        raise BadRequest(f"not a modality code (PS3.3 C.7.3.1.1.1): {', '.join(bad)}")
    match = match.strip().lstrip("?")
    if match:
        match_query(match, "1.2.3")  # refused here rather than at each delivery
    return Filters(actions, wanted, match)


def match_query(match: str, study_uid: str, partition: str = "default") -> Query:
    """The subscription's match as a study-level query pinned to ``study_uid``: the study
    matches when the query finds it. BadRequest naming a bad key or value."""
    try:
        params = parse_qsl(match, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise BadRequest(f"match {match!r} is not a query string (key=value&...)") from None
    for key, _ in params:
        if key.lower() in _NOT_MATCHING or key in ("StudyInstanceUID", "0020000D"):
            raise BadRequest(f"match: {key!r} is not a matching key of a study query")
    params.append(("StudyInstanceUID", study_uid))
    try:
        return parse_qido(Level.STUDY, params, partition=partition, max_limit=1)
    except BadRequest as exc:
        raise BadRequest(f"match: {exc.reason}") from None


def subscriber(sub: Subscription) -> Principal:
    """The principal a subscription reads the feed as."""
    return Principal(
        f"webhook:{sub.name}",
        sub.tenant,
        frozenset({sub.role}),
        # Its reads happen in the webhooks job: the archive's own work, not a front door.
        via="system",
        auth_method="webhook",
    )


class WebhookService:
    def __init__(self, index: Index, guard: Guard, secrets: SecretBox) -> None:
        self.index = index
        self.guard = guard
        self.secrets = secrets

    def add(
        self,
        who: Principal,
        name: str,
        url: str,
        *,
        role: str,
        events: Sequence[str] = (),
        modalities: Sequence[str] = (),
        match: str = "",
        tenant: str | None = None,
    ) -> tuple[Subscription, str]:
        """A new subscription and its signing secret (shown this once)."""
        tenant = self._authorize(who, f"add webhook {name}", tenant)
        if not _NAME.match(name):
            raise BadRequest(
                "a webhook's name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit"
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadRequest("a webhook's url must be an http:// or https:// URL with a host")
        if role not in ASSIGNABLE_ROLES:
            raise BadRequest(f"unknown role {role!r}; roles: {', '.join(sorted(ASSIGNABLE_ROLES))}")
        filters = parse_filters(events, modalities, match)
        secret = new_secret()
        sealed = self.secrets.seal(name, secret)
        record = self._record_job(who, name, f"webhook {name} added: {role} in {tenant}")

        def job(conn: Connection) -> Subscription:
            if sql.by_name(conn, name) is not None:
                raise Conflict(f"a webhook named {name!r} exists already")
            sql.add(
                conn,
                {
                    "name": name,
                    "url": url,
                    "secret": sealed,
                    "tenant": tenant,
                    "role": role,
                    "actions": ",".join(filters.actions),
                    "modalities": ",".join(filters.modalities),
                    "match": filters.match,
                    "created_by": who.id,
                },
                _now_ms(),
            )
            if record is not None:
                record(conn)
            found = sql.by_name(conn, name)
            assert found is not None
            return found

        return self.index.write(job), secret

    def any(self) -> bool:
        """Whether any subscription exists (the webhooks job is queued only then); no caller:
        the job runner asks, and learns nothing of a subscription."""
        with self.index.reading() as conn:
            return sql.any_subscription(conn)

    def listed(self, who: Principal) -> list[Subscription]:
        tenant = self._authorize(who, "list webhooks", None)
        with self.index.reading() as conn:
            return sql.listed(conn, None if self._all_tenants(who) else tenant)

    def remove(self, who: Principal, name: str) -> None:
        sub = self._own(who, name, f"remove webhook {name}")
        record = self._record_job(who, name, f"webhook {name} removed")

        def job(conn: Connection) -> None:
            sql.remove(conn, sub.id)
            if record is not None:
                record(conn)

        self.index.write(job)

    def dead_letters(self, who: Principal, name: str | None = None) -> list[DeadLetter]:
        """Entries given up on, of one subscription or of every one the caller administers."""
        if name is not None:
            self._own(who, name, f"list the dead letters of webhook {name}")
        tenant = self._authorize(who, "list webhook dead letters", None)
        with self.index.reading() as conn:
            return sql.dead_letters(conn, None if self._all_tenants(who) else tenant, name)

    def replay(self, who: Principal, name: str, seq: int | None = None) -> int:
        """Have the next delivery run try the dead letters again (or the one of ``seq``)."""
        sub = self._own(who, name, f"replay dead letters of webhook {name}")
        count = self.index.write(lambda conn: sql.replay(conn, sub.id, seq))
        if count == 0 and seq is not None:
            raise NotFound(f"webhook {name} has no dead letter of entry {seq}")
        return count

    # ------------------------------------------------------------------ helpers
    def _authorize(self, who: Principal, what: str, tenant: str | None) -> str:
        self.guard.authorize(who, Action.ADMIN, what)
        if tenant is not None and tenant != who.tenant:
            self.guard.authorize(who, Action.OPERATE, f"{what} in tenant {tenant}")
            return tenant
        return who.tenant

    def _all_tenants(self, who: Principal) -> bool:
        return self.guard.permits(who, Action.OPERATE)

    def _own(self, who: Principal, name: str, what: str) -> Subscription:
        self._authorize(who, what, None)
        with self.index.reading() as conn:
            sub = sql.by_name(conn, name)
        if sub is None or (sub.tenant != who.tenant and not self._all_tenants(who)):
            raise NotFound(f"no webhook named {name!r}")
        return sub

    def _record_job(
        self, who: Principal, name: str, description: str
    ) -> Callable[[Any], object] | None:
        return self.guard.record_job(
            audit_events.security_configuration_changed(
                who,
                f"webhook:{name}",
                "webhook subscription",
                description=description,
                request_id=who.request_id,
            )
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
