"""Sharing a study: links for people without an account, and grants to the tenant's users.

A share link is a :class:`~nubis.security.policy.Principal` whose scope is one study, or some of
its series, with read-only actions and an expiry (docs/architecture.md, "a principal with a
scope"). Nothing here decides what a link's holder may read: opening a link starts a browser
session whose principal is ``share:<link id>`` with an internal role (``share-view``, or
``share-download`` to retrieve whole objects too), and a grant row naming that principal
scopes it, so every read goes through the same services, the same Guard and the same scope SQL
as a referrer's (``index/query_sql.granted_to``): QIDO-RS at every level, metadata, frames,
rendered images, WADO-URI. No user, OIDC subject or DIMSE peer can be named ``share:...``
(user names have no colon; the others carry their own prefix).

- **Who may share.** Roles with ``Action.SHARE``: radiologist and admin, which read their whole
  tenant. A referrer reads what others granted it and may not pass it on: sharing is deciding
  who else sees a patient's images, which is the tenant's staff's call. The study (and the
  series chosen) must be found through :class:`~nubis.services.query.QueryService` with the
  creator's own scope, which records the query.
- **The token** is 256 random bits (43 URL-safe characters), shown once; only its SHA-256 is
  stored, found by an indexed equality on the hash and compared again in constant time.
- **A PIN** (optional) is kept as argon2id. Wrong PINs go through the login throttle keyed by
  ``share:<id>`` and by address (429 while locked; the lockout's start is a Security Alert).
- **Expiry** is ``share_default_days`` unless chosen, at most ``share_max_days``. A link's
  session ends at the link's expiry (or ``session_max_hours``, then the link is opened again).
- **Revocation** (the link's creator, or an admin of its tenant) deletes the grant rows and
  ends the link's sessions at once.
- **De-identified links** (issue 14, docs/research.md). A link may be made de-identified,
  naming a research project (its profile and key: the link's pseudonyms are the project's) or
  a profile alone (then a random key of the link's own, wrapped by the archive's key provider
  as a project's is). Its session's role is ``share-deidentified`` (DEIDENTIFY only): the
  identified API refuses it, and every read goes through
  :class:`~nubis.services.research_view.ResearchView` (``/share/dicom-web``), the
  researcher's view, scoped by the link's grant rows as any link's reads are.
- **Records.** Creating and revoking a link, and granting a study to a user or withdrawing it,
  are Security Alerts (Security Roles Changed, as ``nubis users grant``) naming the study,
  committed in the change's own transaction. Every open is a User Authentication (Login) naming
  the link's principal with its address, the link's creator and the study; a wrong PIN the same
  with a minor failure. The reads themselves are recorded by the services as anyone's.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydicom.datadict import tag_for_keyword
from sqlalchemy import Connection, delete, insert, literal, select, update

from nubis.deid.profile import parse_profile
from nubis.errors import BadRequest, NotFound, Unauthorized
from nubis.index.database import Index
from nubis.index.schema import grants, share_links
from nubis.model.audit import AuditEvent, EventOutcome, EventType
from nubis.model.query import Level, Query, tag_hex
from nubis.ports.keys import WrappedKey
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.security.sessions import SessionStore
from nubis.security.throttle import LoginThrottle
from nubis.security.users import UserStore
from nubis.services.guard import Guard
from nubis.services.query import QueryService
from nubis.services.research import ResearchService

SHARE_PREFIX = "share:"
VIEW_ROLE = "share-view"
DOWNLOAD_ROLE = "share-download"
DEIDENTIFIED_ROLE = "share-deidentified"
# The key provider's subject of a de-identified link's own key (a project's: research-project:).
_KEY_PREFIX = "share-link:"
PIN_MIN, PIN_MAX = 4, 64
NOTE_MAX = 1000
# Most links a listing shows (newest first); older ones are still revocable by id (CLI).
LIST_MAX = 1000
# More series than any study has; the query is capped all the same.
_SERIES_MAX = 10000
_DAY_MS = 86_400_000
_TOKEN_CHARS_MAX = 128
_hasher = PasswordHasher()

_SERIES_FIELDS = frozenset(
    t
    for t in (
        tag_for_keyword(k)
        for k in (
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "SeriesDescription",
            "NumberOfSeriesRelatedInstances",
            "PatientID",
        )
    )
    if t is not None
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ShareLink:
    """A link as listings show it: everything but the token (never stored) and the PIN."""

    id: str
    tenant: str
    study_uid: str
    series_uids: tuple[str, ...]  # empty: the whole study
    created_by: str
    created_at: int  # ms since the epoch, as every time here
    expires_at: int
    revoked_at: int | None
    revoked_by: str | None
    has_pin: bool
    can_download: bool
    note: str
    last_opened_at: int | None
    open_count: int
    # De-identified: the research project whose profile and key it reads with, or a profile
    # of its own (TOML) and its own wrapped key (subject, wrapped form).
    deid_project_id: int | None = None
    deid_profile_toml: str | None = None
    deid_key: tuple[str, WrappedKey] | None = None

    @property
    def principal_id(self) -> str:
        return SHARE_PREFIX + self.id

    @property
    def deidentified(self) -> bool:
        return self.deid_project_id is not None or self.deid_profile_toml is not None

    @property
    def roles(self) -> frozenset[str]:
        if self.deidentified:
            return frozenset({DEIDENTIFIED_ROLE})
        return frozenset({DOWNLOAD_ROLE if self.can_download else VIEW_ROLE})

    def state(self, now_ms: int | None = None) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= (_now_ms() if now_ms is None else now_ms):
            return "expired"
        return "active"


@dataclass(frozen=True)
class SeriesSummary:
    """One series of a study, as the share pages list it (from a recorded query)."""

    series_uid: str
    modality: str
    number: int | None
    description: str
    instances: int
    patient_id: str | None


@dataclass(frozen=True)
class OpenedLink:
    """A link just opened: its record, its principal and the new session's cookie token."""

    link: ShareLink
    principal: Principal
    session_token: str


class SharingService:
    """Share links and user grants (see the module docs)."""

    def __init__(
        self,
        index: Index,
        guard: Guard,
        query: QueryService,
        users: UserStore,
        sessions: SessionStore,
        throttle: LoginThrottle,
        research: ResearchService,
        *,
        default_days: int,
        max_days: int,
    ) -> None:
        self.research = research
        self.index = index
        self.guard = guard
        self.query = query
        self.users = users
        self.sessions = sessions
        self.throttle = throttle
        self.default_days = default_days
        self.max_days = max_days

    # ------------------------------------------------------------------ what a study holds
    def series_of(self, who: Principal, study_uid: str) -> list[SeriesSummary]:
        """The series of a study that ``who`` may see, through QueryService (authorized,
        scoped, recorded as a Query); NotFound when there are none."""
        query = Query(
            level=Level.SERIES, study_uid=study_uid, include=_SERIES_FIELDS, limit=_SERIES_MAX
        )
        page = self.query.search(who, query, text=f"StudyInstanceUID={study_uid} (series)")
        if not page.items:
            raise NotFound(f"no study {study_uid}")
        return [_series_summary(item) for item in page.items]

    # ------------------------------------------------------------------ links
    def create(
        self,
        who: Principal,
        study_uid: str,
        *,
        series_uids: Iterable[str] = (),
        days: int | None = None,
        pin: str = "",
        can_download: bool = False,
        note: str = "",
        deid_project: str | None = None,
        deid_profile_toml: str | None = None,
    ) -> tuple[ShareLink, str]:
        """A new link to a study (or to ``series_uids`` of it): its record and its token, shown
        now and never again. Every series of the study named: the whole study, series stored
        later included. De-identified with ``deid_project``'s profile and key (a project of
        the tenant, by name), or with ``deid_profile_toml`` and a key of the link's own."""
        decision = self.guard.authorize(
            who, Action.SHARE, f"share study {study_uid}", study_uids=(study_uid,)
        )
        assert decision.scope is not None
        lifetime = self.default_days if days is None else days
        if not 1 <= lifetime <= self.max_days:
            raise BadRequest(f"a share link lasts 1 to {self.max_days} days (share_max_days)")
        if pin and not PIN_MIN <= len(pin) <= PIN_MAX:
            raise BadRequest(f"a PIN has {PIN_MIN} to {PIN_MAX} characters")
        if len(note) > NOTE_MAX:
            raise BadRequest(f"the note is longer than {NOTE_MAX} characters")
        found = self.series_of(who, study_uid)
        chosen = tuple(dict.fromkeys(series_uids))
        known = {s.series_uid for s in found}
        for uid in chosen:
            if uid not in known:
                raise BadRequest(f"series {uid} is not a series of study {study_uid}")
        subset = () if set(chosen) >= known else chosen
        tenant = decision.scope.partition
        deid_columns, deid_said = self._deidentification(tenant, deid_project, deid_profile_toml)
        link_id = secrets.token_hex(8)
        token = secrets.token_urlsafe(32)
        now = _now_ms()
        row = {
            "id": link_id,
            "token_hash": token_hash(token),
            "tenant": tenant,
            "study_uid": study_uid,
            "series_uids": "\\".join(subset) or None,
            "created_by": who.id,
            "created_at": now,
            "expires_at": now + lifetime * _DAY_MS,
            "revoked_at": None,
            "revoked_by": None,
            "pin_hash": _hasher.hash(pin) if pin else None,
            "can_download": can_download,
            "note": note,
            "last_opened_at": None,
            "open_count": 0,
            **deid_columns,
        }
        what = ("view and download" if can_download else "view only") + deid_said
        scope = f"{len(subset)} series of study" if subset else "study"
        event = self._changed(
            who,
            f"share link {link_id} made for {scope} {study_uid}, {what}, "
            f"{lifetime} day(s){', with a PIN' if pin else ''}",
            study_uid,
            found[0].patient_id,
        )
        record = self.guard.record_job(event)

        def job(conn: Connection) -> None:
            _forget_expired(conn, tenant, now)
            conn.execute(insert(share_links).values(**row))
            subject = SHARE_PREFIX + link_id
            for series_uid in subset or (None,):
                conn.execute(
                    insert(grants).values(
                        subject=subject,
                        tenant=tenant,
                        patient_id=None,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        created_at=now // 1000,
                    )
                )
            if record is not None:
                record(conn)

        self.index.write(job)
        return _link(row), token

    def _deidentification(
        self, tenant: str, project_name: str | None, profile_toml: str | None
    ) -> tuple[dict[str, Any], str]:
        """A de-identified link's columns and the words its creation record says of them."""
        if project_name is not None and profile_toml is not None:
            raise BadRequest("a de-identified link names a research project or a profile, not both")
        if project_name is not None:
            project = self.research.project_named(tenant, project_name)
            profile = project.profile
            return {"deid_project_id": project.id}, (
                f", de-identified as research project {project.name} "
                f"(profile {profile.name} version {profile.version})"
            )
        if profile_toml is None:
            return {}, ""
        profile = parse_profile(profile_toml)
        _, subject, wrapped = self.research.new_key(tenant, _KEY_PREFIX)
        return {
            "deid_profile_toml": profile_toml,
            "deid_key_subject": subject,
            "deid_key_id": wrapped.key_id,
            "deid_key_wrapped_subject": wrapped.subject,
            "deid_key_ciphertext": wrapped.ciphertext,
        }, (
            f", de-identified with profile {profile.name} version {profile.version} "
            "and a key of its own"
        )

    def list(self, who: Principal, *, study_uid: str | None = None) -> list[ShareLink]:
        """Links of ``who``'s tenant, newest first: all of them for an admin, one's own
        otherwise; of one study when given."""
        decision = self.guard.authorize(who, Action.SHARE, "list share links")
        assert decision.scope is not None
        stmt = (
            select(share_links)
            .where(share_links.c.tenant == decision.scope.partition)
            .order_by(share_links.c.created_at.desc(), share_links.c.id)
            .limit(LIST_MAX)
        )
        if not self.guard.permits(who, Action.ADMIN):
            stmt = stmt.where(share_links.c.created_by == who.id)
        if study_uid is not None:
            stmt = stmt.where(share_links.c.study_uid == study_uid)
        with self.index.reading() as conn:
            return [_link(row._mapping) for row in conn.execute(stmt)]

    def revoke(self, who: Principal, link_id: str) -> ShareLink:
        """Revoke a link (its creator, or an admin of its tenant): its grants go and its
        sessions end at once. Revoking a revoked link changes nothing; a link of someone else
        (for a non-admin) is not found, like one that does not exist."""
        decision = self.guard.authorize(who, Action.SHARE, f"revoke share link {link_id}")
        assert decision.scope is not None
        conditions = [share_links.c.id == link_id, share_links.c.tenant == decision.scope.partition]
        if not self.guard.permits(who, Action.ADMIN):
            conditions.append(share_links.c.created_by == who.id)
        now = _now_ms()

        def job(conn: Connection) -> ShareLink:
            row = conn.execute(select(share_links).where(*conditions)).first()
            if row is None:
                raise NotFound(f"no share link {link_id}")
            link = _link(row._mapping)
            if link.revoked_at is not None:
                return link
            conn.execute(
                update(share_links)
                .where(share_links.c.id == link_id)
                .values(revoked_at=now, revoked_by=who.id)
            )
            conn.execute(delete(grants).where(grants.c.subject == link.principal_id))
            record = self.guard.record_job(
                self._changed(who, f"share link {link_id} revoked", link.study_uid, None)
            )
            if record is not None:
                record(conn)
            return link

        link = self.index.write(job)
        # After the commit: the grants are gone already, so a request between the two finds
        # nothing; then no session of the link is left to try.
        self.sessions.end_all(link.principal_id)
        return replace(
            link, revoked_at=link.revoked_at or now, revoked_by=link.revoked_by or who.id
        )

    def peek(self, token: str) -> ShareLink:
        """The link a token opens, if it may be opened now (for its entry page, which shows no
        patient data); NotFound saying why otherwise. Reads nothing of the study."""
        link, _ = self._usable(token)
        return link

    def open(self, token: str, *, pin: str, peer: str | None) -> OpenedLink:
        """Open a link from address ``peer``: check its PIN (throttled), count the open,
        record it, and start the link's session. Unauthorized for a missing or wrong PIN,
        TooManyRequests while the link or the address is locked."""
        link, pin_hash = self._usable(token)
        principal = Principal(
            link.principal_id,
            link.tenant,
            link.roles,
            via="web",
            peer=peer,
            auth_method="share",
        )
        if pin_hash is not None:
            self._check_pin(link, principal, pin_hash, pin, peer)
        now = _now_ms()
        record = self.guard.record_job(
            audit_events.share_opened(
                principal,
                created_by=link.created_by,
                study_uid=link.study_uid,
                description=f"share link {link.id} of {link.created_by} opened",
                front_door="web",
            )
        )

        def job(conn: Connection) -> None:
            counted = conn.execute(
                update(share_links)
                .where(
                    share_links.c.id == link.id,
                    share_links.c.revoked_at.is_(None),
                    share_links.c.expires_at > now,
                )
                .values(last_opened_at=now, open_count=share_links.c.open_count + 1)
            )
            if not counted.rowcount:  # revoked (or expired) since it was looked up
                raise NotFound("this share link has been revoked")
            if record is not None:
                record(conn)

        self.index.write(job)
        session_token, _ = self.sessions.start(
            principal, auth_method="share", peer=peer, expires_at_ms=link.expires_at
        )
        opened = replace(link, last_opened_at=now, open_count=link.open_count + 1)
        return OpenedLink(opened, principal, session_token)

    def link_of(self, who: Principal) -> ShareLink:
        """The link behind a share session's principal (its own landing page); NotFound for
        any other principal, or a link no longer usable."""
        if not who.id.startswith(SHARE_PREFIX):
            raise NotFound("this page belongs to a share link's session: open the link")
        with self.index.reading() as conn:
            row = conn.execute(
                select(share_links).where(
                    share_links.c.id == who.id.removeprefix(SHARE_PREFIX),
                    share_links.c.tenant == who.tenant,
                )
            ).first()
        if row is None or _link(row._mapping).state() != "active":
            raise NotFound("this share link has expired or was revoked")
        return _link(row._mapping)

    def _usable(self, token: str) -> tuple[ShareLink, str | None]:
        """The link of ``token`` and its PIN hash, if it may be opened now."""
        unknown = NotFound("this share link is not valid: check that it was copied whole")
        if not token or len(token) > _TOKEN_CHARS_MAX:
            raise unknown
        digest = token_hash(token)
        with self.index.reading() as conn:
            row = conn.execute(
                select(share_links).where(share_links.c.token_hash == digest)
            ).first()
        # Found by its hash; comparing again in constant time keeps the decision independent of
        # how the database compares strings.
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            raise unknown
        link = _link(row._mapping)
        state = link.state()
        if state == "revoked":
            raise NotFound("this share link has been revoked")
        if state == "expired":
            raise NotFound("this share link has expired: ask for a new one")
        return link, row.pin_hash

    def _check_pin(
        self, link: ShareLink, who: Principal, pin_hash: str, pin: str, peer: str | None
    ) -> None:
        if not pin:
            raise Unauthorized("this share link needs its PIN")
        self.throttle.check(link.principal_id, peer)
        try:
            _hasher.verify(pin_hash, pin[:PIN_MAX])
        except (VerificationError, InvalidHashError):
            self.throttle.failed(link.principal_id, peer, front_door="web")
            self.guard.record(
                audit_events.share_opened(
                    who,
                    created_by=link.created_by,
                    study_uid=link.study_uid,
                    outcome=EventOutcome.MINOR_FAILURE,
                    description=f"share link {link.id}: wrong PIN",
                    front_door="web",
                )
            )
            raise Unauthorized("wrong PIN") from None
        self.throttle.succeeded(link.principal_id)

    # ------------------------------------------------------------------ user grants
    def grantable_users(self, who: Principal) -> builtins.list[str]:
        """Users of ``who``'s tenant whose reads are limited to grants (referrers): the ones a
        study can be shared with (the others read the whole tenant already)."""
        decision = self.guard.authorize(who, Action.SHARE, "list users to share with")
        assert decision.scope is not None
        return [
            user.name
            for user in self.users.list_users()
            if user.tenant == decision.scope.partition and self._grant_limited(user.principal())
        ]

    def user_grants(self, who: Principal, study_uid: str) -> builtins.list[str]:
        """The users a study is granted to by name (patient grants, made with ``nubis users
        grant --patient``, are not listed)."""
        decision = self.guard.authorize(who, Action.SHARE, f"list grants of study {study_uid}")
        assert decision.scope is not None
        return sorted(
            subject
            for subject, _, kind, _ in self.users.list_grants(
                tenant=decision.scope.partition, study_uid=study_uid
            )
            if kind == "study" and not subject.startswith(SHARE_PREFIX)
        )

    def grant_user(self, who: Principal, study_uid: str, user_name: str) -> None:
        """Let a user of the tenant whose reads are grant-limited see the study."""
        decision = self.guard.authorize(
            who, Action.SHARE, f"share study {study_uid} with {user_name}", study_uids=(study_uid,)
        )
        assert decision.scope is not None
        found = self.series_of(who, study_uid)
        user = self.users.get_user(user_name)
        if user is None or user.tenant != decision.scope.partition:
            raise NotFound(f"no user {user_name} in tenant {decision.scope.partition}")
        if not self._grant_limited(user.principal()):
            raise BadRequest(f"user {user_name} reads every study of the tenant already")
        event = self._changed(
            who, f"{user_name} granted study {study_uid}", study_uid, found[0].patient_id
        )
        self.users.grant(
            user_name,
            tenant=decision.scope.partition,
            study_uid=study_uid,
            also=self.guard.record_job(event),
        )

    def withdraw_user(self, who: Principal, study_uid: str, user_name: str) -> None:
        """Withdraw a user's grant of the study; NotFound when there is none."""
        decision = self.guard.authorize(
            who, Action.SHARE, f"withdraw study {study_uid} from {user_name}"
        )
        assert decision.scope is not None
        if user_name.startswith(SHARE_PREFIX):
            raise NotFound(f"no such grant for {user_name}: revoke the link instead")
        event = self._changed(
            who, f"grant of study {study_uid} to {user_name} withdrawn", study_uid, None
        )
        self.users.revoke_grant(
            user_name,
            tenant=decision.scope.partition,
            study_uid=study_uid,
            also=self.guard.record_job(event),
        )

    def _grant_limited(self, user: Principal) -> bool:
        decision = self.guard.policy.decide(user, Action.READ)
        return (
            decision.allowed and decision.scope is not None and decision.scope.grantee is not None
        )

    def _changed(
        self, who: Principal, description: str, study_uid: str, patient_id: str | None
    ) -> AuditEvent:
        objects = [audit_events.study_object(study_uid)]
        if patient_id:
            objects.insert(0, audit_events.patient_object(patient_id))
        return audit_events.security_alert(
            who,
            EventType.SECURITY_ROLES_CHANGED,
            outcome=EventOutcome.SUCCESS,
            description=description,
            request_id=who.request_id,
            objects=objects,
        )


def _forget_expired(conn: Connection, tenant: str, now: int) -> None:
    """Grants of the tenant's expired links: no session of theirs is left (a session ends at
    its link's expiry), so they are dead rows; they go whenever a new link is made."""
    expired = select(literal(SHARE_PREFIX) + share_links.c.id).where(
        share_links.c.tenant == tenant,
        share_links.c.expires_at <= now,
        share_links.c.revoked_at.is_(None),
    )
    conn.execute(delete(grants).where(grants.c.tenant == tenant, grants.c.subject.in_(expired)))


def _link(row: Any) -> ShareLink:
    series_text = row["series_uids"] or ""
    return ShareLink(
        id=row["id"],
        tenant=row["tenant"],
        study_uid=row["study_uid"],
        series_uids=tuple(s for s in series_text.split("\\") if s),
        created_by=row["created_by"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
        has_pin=row["pin_hash"] is not None,
        can_download=bool(row["can_download"]),
        note=row["note"],
        last_opened_at=row["last_opened_at"],
        open_count=row["open_count"],
        deid_project_id=row.get("deid_project_id"),
        deid_profile_toml=row.get("deid_profile_toml"),
        deid_key=None
        if row.get("deid_key_subject") is None
        else (
            row["deid_key_subject"],
            WrappedKey(
                row["deid_key_id"],
                row["deid_key_wrapped_subject"],
                bytes(row["deid_key_ciphertext"]),
            ),
        ),
    )


def _value(item: dict[str, Any], keyword: str) -> Any:
    tag = tag_for_keyword(keyword)
    element = item.get(tag_hex(tag)) if tag is not None else None
    values = (element or {}).get("Value") or []
    return values[0] if values else None


def _series_summary(item: dict[str, Any]) -> SeriesSummary:
    number = _value(item, "SeriesNumber")
    return SeriesSummary(
        series_uid=str(_value(item, "SeriesInstanceUID")),
        modality=str(_value(item, "Modality") or ""),
        number=int(number) if number is not None else None,
        description=str(_value(item, "SeriesDescription") or ""),
        instances=int(_value(item, "NumberOfSeriesRelatedInstances") or 0),
        patient_id=_value(item, "PatientID"),
    )


__all__ = [
    "DEIDENTIFIED_ROLE",
    "DOWNLOAD_ROLE",
    "SHARE_PREFIX",
    "VIEW_ROLE",
    "OpenedLink",
    "SeriesSummary",
    "ShareLink",
    "SharingService",
    "token_hash",
]
