"""Who may do what: principals, built-in roles, scopes and the default-deny decision.

Every front door (DICOMweb, DIMSE, CLI) turns its caller into a :class:`Principal` and hands it
to the services, which ask :class:`AuthPolicy` before touching data. A decision has two steps,
in this order:

1. **Action.** May any of the principal's roles do this at all (read, write, delete, ...)? If
   not: :class:`~nubis.errors.Forbidden` (HTTP 403, DIMSE 0x0124), whatever the resource, so the
   answer says nothing about what exists.
2. **Scope.** Which studies? Always the principal's tenant (the index's ``partition``) and,
   for roles limited to grants (referrer), only the patients and studies granted to it. The
   scope is not checked against a resource after it was found: it becomes part of the index
   query (:class:`Scope`), so a study outside it is found exactly as often as one that does not
   exist (404, empty QIDO-RS), by the same statement.

Roles (``ROLES``): admin (everything in its tenant, user management), radiologist (read and
write the tenant, hand out and perform workitems), referrer (read granted studies), uploader
and modality (store only), researcher (de-identified reads of the research projects it is a
member of, through nubis.services.research_view, identified reads refused; and aggregate
statistics, whose small cells are suppressed), auditor (the audit log only), monitor (the
metrics only: what a Prometheus server's API key is given); and the internal roles of share
links (``share-deidentified``: a de-identified link's, which reads like a researcher) and of
analyzer jobs (``analyzer``: read and store, never a user's).
Nothing is allowed that a role does not list. The audit log is the archive's,
not a tenant's (its records name every tenant's patients and users), so only principals of the
home tenant ``default`` may read it, whatever their role. So it is with running the archive
itself (OPERATE: jobs, storage and its cost, the DIMSE peer table, users of other tenants):
those span every tenant, and only admins of the home tenant may.

Break-glass: a principal whose roles are in ``break_glass_roles`` may ask for emergency read
access to its whole tenant with a reason (``X-Nubis-Break-Glass: <reason>``); the services log it
at WARNING and record a Security Alert (Emergency Override Started) before the access.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from nubis.errors import Forbidden

DEFAULT_TENANT = "default"


class Action(enum.Flag):
    """What a request does (the design guide's ``Action``), plus AUDIT: read the audit log."""

    NONE = 0
    READ = enum.auto()  # query, metadata, pixels, rendered images
    WRITE = enum.auto()  # store
    DELETE = enum.auto()
    EXPORT = enum.auto()
    DEIDENTIFY = enum.auto()  # de-identified reads (no identified data)
    ADMIN = enum.auto()  # users, keys, grants
    AUDIT = enum.auto()  # the audit log
    # Whole objects leave as files (WADO-RS instances, WADO-URI application/dicom, C-GET,
    # C-MOVE), always with READ; frames, rendered images and metadata need READ alone.
    DOWNLOAD = enum.auto()
    SHARE = enum.auto()  # share a study: links for people without an account, user grants
    OPERATE = enum.auto()  # the archive itself: jobs, storage, DIMSE peers, every tenant's users
    MONITOR = enum.auto()  # the archive's metrics (/metrics): counts and rates, no patient data
    # Hand out and perform workitems (UPS-RS, docs/worklists.md): create, update, claim,
    # complete, cancel. Reading and watching them is READ, scoped like studies.
    WORKLIST = enum.auto()
    # Federated statistics: counts with small cells suppressed, never a UID or patient value
    # (nubis.model.aggregates), so identifying no one; allowed where DEIDENTIFY is.
    AGGREGATE = enum.auto()


# Actions whose scope grants may limit (the rest is tenant-wide or refused).
READING = Action.READ | Action.DOWNLOAD


@dataclass(frozen=True)
class RoleSpec:
    """A built-in role: the actions it allows and whether its reads need a grant."""

    actions: Action
    granted_only: bool = False
    summary: str = ""
    # False for the roles of share links: never given to a user, a token or a setting.
    assignable: bool = True


ROLES: dict[str, RoleSpec] = {
    "admin": RoleSpec(
        Action.READ
        | Action.DOWNLOAD
        | Action.WRITE
        | Action.DELETE
        | Action.EXPORT
        | Action.ADMIN
        | Action.AUDIT
        | Action.SHARE
        | Action.OPERATE
        | Action.MONITOR
        | Action.WORKLIST
        | Action.AGGREGATE,
        summary="everything in its tenant, users and keys included; in the home tenant, "
        "the archive itself (jobs, storage, DIMSE peers, every tenant's users)",
    ),
    "radiologist": RoleSpec(
        Action.READ | Action.DOWNLOAD | Action.WRITE | Action.SHARE | Action.WORKLIST,
        summary="read, store and share in its tenant; hand out and perform workitems",
    ),
    "referrer": RoleSpec(
        Action.READ | Action.DOWNLOAD, granted_only=True, summary="read the studies granted"
    ),
    "uploader": RoleSpec(Action.WRITE, summary="store only"),
    "modality": RoleSpec(Action.WRITE, summary="store only (an imaging device)"),
    "researcher": RoleSpec(
        Action.DEIDENTIFY | Action.AGGREGATE,
        summary="de-identified reads of its research projects (/projects/{name}/dicom-web) "
        "and aggregate statistics",
    ),
    "auditor": RoleSpec(Action.AUDIT, summary="the audit log only"),
    "monitor": RoleSpec(
        Action.MONITOR, summary="the archive's metrics only (a Prometheus server's key)"
    ),
    "analyzer": RoleSpec(
        Action.READ | Action.DOWNLOAD | Action.WRITE | Action.WORKLIST,
        assignable=False,
        summary="an analyzer's jobs: read a study, store results in it, perform the workitems "
        "asking for an analysis (internal)",
    ),
    "share-view": RoleSpec(
        Action.READ,
        granted_only=True,
        assignable=False,
        summary="a share link's session: view the shared study (internal)",
    ),
    "share-download": RoleSpec(
        Action.READ | Action.DOWNLOAD,
        granted_only=True,
        assignable=False,
        summary="a share link's session: view and download the shared study (internal)",
    ),
    "share-deidentified": RoleSpec(
        Action.DEIDENTIFY,
        granted_only=True,
        assignable=False,
        summary="a de-identified share link's session: the shared study through the "
        "de-identifying view only (/share/dicom-web; internal)",
    ),
}
ASSIGNABLE_ROLES = frozenset(name for name, spec in ROLES.items() if spec.assignable)

# The refusal a researcher gets: say why, so nobody mistakes it for a missing grant.
DEIDENTIFIED_ONLY = (
    "the researcher role reads de-identified data only, through the research projects it is "
    "a member of (/projects/{name}/dicom-web/...): identified metadata, pixels and query "
    "results are refused"
)

DEIDENTIFIED_SHARE_ONLY = (
    "this share link is de-identified: its study is read through /share/ and "
    "/share/dicom-web/... only"
)


AUDIT_HOME_TENANT_ONLY = (
    f"the audit log spans every tenant: only auditors and admins of tenant {DEFAULT_TENANT!r} "
    "may read it"
)
OPERATE_HOME_TENANT_ONLY = (
    "jobs, storage, the DIMSE peers and other tenants' users are the archive's, not a "
    f"tenant's: only admins of tenant {DEFAULT_TENANT!r} may manage them"
)

MONITOR_HOME_TENANT_ONLY = (
    "the metrics count every tenant's requests, jobs and storage: only monitors and admins "
    f"of tenant {DEFAULT_TENANT!r} may read them"
)


def parse_roles(text: str | Iterable[str]) -> frozenset[str]:
    """Role names from ``"a,b"`` or an iterable; ValueError names an unknown one. The internal
    roles of share links are unknown here: whatever reads roles from a user row, a setting or
    a command line goes through this."""
    names = text.split(",") if isinstance(text, str) else list(text)
    roles = frozenset(n.strip().lower() for n in names if n.strip())
    unknown = sorted(roles - ASSIGNABLE_ROLES)
    if unknown:
        assignable = ", ".join(r for r in ROLES if r in ASSIGNABLE_ROLES)
        raise ValueError(f"unknown role(s) {', '.join(unknown)}; built-in roles: {assignable}")
    return roles


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, whatever the front door.

    ``id`` is what grants and audit records name (a user name, ``oidc:<sub>``, ``dimse:<AE>``,
    ``cli:<os user>``); ``via`` is the front door (``dicomweb``, ``dimse``, ``cli``);
    ``peer`` the remote address; ``break_glass`` the reason of an emergency override the
    caller asked for (honoured only for roles allowed to use it).
    """

    id: str
    tenant: str
    roles: frozenset[str]
    via: str = "dicomweb"
    peer: str | None = None
    ae_title: str | None = None
    auth_method: str = ""  # basic, apikey, oidc, dimse, cli
    break_glass: str | None = None
    request_id: str | None = None

    @property
    def user_id(self) -> str:
        return self.id

    def with_request(self, *, peer: str | None, request_id: str | None) -> Principal:
        return replace(self, peer=peer, request_id=request_id)


def system_principal(
    name: str = "system", *, tenant: str = DEFAULT_TENANT, via: str = "cli"
) -> Principal:
    """An all-powerful principal of one tenant, for local maintenance (the CLI, whose user
    can read the data folder anyway) and tests."""
    return Principal(f"{via}:{name}", tenant, frozenset({"admin"}), via=via, auth_method=via)


@dataclass(frozen=True)
class Scope:
    """Which studies an authorized request may see: the tenant's partition and, when
    ``grantee`` is set, only those granted to it (per patient or per study)."""

    partition: str
    grantee: str | None = None
    # Studies held in quarantine (their instances disagree on the patient, issue 12) are seen
    # by admins only: absent for everyone else, as if they were not stored.
    sees_quarantine: bool = False


@dataclass(frozen=True)
class Decision:
    """The outcome of :meth:`AuthPolicy.decide`."""

    allowed: bool
    reason: str
    scope: Scope | None = None
    break_glass: str | None = None  # the reason, when the access is an emergency override


@dataclass
class AuthPolicy:
    """RBAC over the built-in roles; default deny."""

    break_glass_roles: frozenset[str] = field(
        default_factory=lambda: frozenset({"radiologist", "referrer"})
    )

    def actions(self, who: Principal) -> Action:
        allowed = Action.NONE
        for role in who.roles:
            spec = ROLES.get(role)
            if spec is not None:
                allowed |= spec.actions
        return allowed

    def decide(self, who: Principal, action: Action) -> Decision:
        """Whether ``who`` may do ``action``, and on which studies (see the module docs)."""
        if not who.tenant:
            return Decision(False, f"{who.id} belongs to no tenant")
        allowed = self.actions(who)
        if not action or action & allowed != action:
            if action & Action.READ and allowed & Action.DEIDENTIFY:
                if "share-deidentified" in who.roles:
                    return Decision(False, DEIDENTIFIED_SHARE_ONLY)
                return Decision(False, DEIDENTIFIED_ONLY)
            roles = ", ".join(sorted(who.roles)) or "no role"
            missing = action & ~allowed
            return Decision(False, f"{who.id} ({roles}) may not {_verb(missing or action)}")
        if action & Action.AUDIT and who.tenant != DEFAULT_TENANT:
            # Records carry no tenant and name patients and users of every tenant: reading
            # them is an archive-wide act, left to the home tenant.
            return Decision(False, AUDIT_HOME_TENANT_ONLY)
        if action & Action.OPERATE and who.tenant != DEFAULT_TENANT:
            return Decision(False, OPERATE_HOME_TENANT_ONLY)
        if action & Action.MONITOR and who.tenant != DEFAULT_TENANT:
            return Decision(False, MONITOR_HOME_TENANT_ONLY)
        if action & ~READING:
            # Write, delete, export, admin, share, operate: tenant-wide roles only (none of
            # them is limited).
            return Decision(
                True, "allowed", Scope(who.tenant, sees_quarantine="admin" in who.roles)
            )
        tenant_wide = Action.NONE
        for role in who.roles:
            spec = ROLES.get(role)
            if spec is not None and not spec.granted_only:
                tenant_wide |= spec.actions
        if action & tenant_wide == action:
            return Decision(
                True, "allowed", Scope(who.tenant, sees_quarantine="admin" in who.roles)
            )
        if who.break_glass:
            if who.roles & self.break_glass_roles:
                return Decision(True, "break-glass", Scope(who.tenant), break_glass=who.break_glass)
            return Decision(False, f"{who.id} may not use break-glass access")
        return Decision(True, "granted studies", Scope(who.tenant, grantee=who.id))

    def require(self, who: Principal, action: Action) -> Decision:
        """:meth:`decide`, raising Forbidden (403 / 0x0124) when refused."""
        decision = self.decide(who, action)
        if not decision.allowed:
            raise Forbidden(decision.reason)
        return decision


def _verb(action: Action) -> str:
    names = [a.name.lower() for a in Action if a and a in action and a.name]
    return " and ".join(names) or "do this"


def break_glass_roles(text: str) -> frozenset[str]:
    return parse_roles(text)


__all__ = [
    "ASSIGNABLE_ROLES",
    "AUDIT_HOME_TENANT_ONLY",
    "DEFAULT_TENANT",
    "MONITOR_HOME_TENANT_ONLY",
    "OPERATE_HOME_TENANT_ONLY",
    "READING",
    "ROLES",
    "Action",
    "AuthPolicy",
    "Decision",
    "Principal",
    "RoleSpec",
    "Scope",
    "parse_roles",
    "system_principal",
]
