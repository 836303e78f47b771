"""Research projects (issue 14): cohorts, members, project keys, the re-identification table.

A project names a de-identification profile (TOML, checked by ``deid.profile.parse_profile``),
a cohort and its members (researchers). The cohort is **resolved when the project is made**:
the QIDO-RS query (``Modality=CT&StudyDate=20200101-20231231``) or the list of studies becomes a
list of Study Instance UIDs (``research_studies``), so every export and every on-the-fly view
of the project reads the same studies, and an export can be repeated; a study stored later
joins no project by itself (make a new project).

The project's key (32 random bytes) makes its pseudonyms (``deid.pseudonyms``): the same
patient gets the same pseudonym in every export and view of the project, another in another
project. It is stored wrapped by the archive's key provider as a key of its own
(``KeyProvider.wrap`` under the subject ``research-project:<random id>``), never in the clear,
so KEK rotation and retirement re-wrap it with the patient keys, and deleting it (crypto-
shredding ``research-project:<id>``) makes the re-identification table unreadable for good.

The re-identification table (``research_reid``) holds, for each patient pseudonym and each
remapped Study Instance UID of the cohort, the original (Patient ID, Study Instance UID)
sealed with AES-GCM under a key drawn from the project's key, found by a keyed HMAC of the
pseudonym: without the archive's keys the index links no pseudonym to anyone. The researcher's
view reads it to turn a remapped Study Instance UID in a URL back into the stored study;
:meth:`ResearchService.reidentify` lets an admin read it, each lookup audited as a Patient
Record read.

Making and changing projects is ADMIN, in the admin's tenant, audited (Security Alert,
Security Configuration); so is every re-identification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, func, insert, select

from nubis.deid.profile import Profile, parse_profile
from nubis.deid.pseudonyms import Pseudonyms
from nubis.errors import BadRequest, Conflict, KeyUnavailable, NotFound
from nubis.index.database import Index
from nubis.index.schema import (
    research_members,
    research_projects,
    research_reid,
    research_studies,
    users,
)
from nubis.model.audit import EventAction, EventOutcome
from nubis.model.query import Level, Query, parse_qido
from nubis.ports.keys import KeyProvider, WrappedKey
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard
from nubis.services.query import QueryService

__all__ = ["Project", "ProjectKey", "Reidentified", "ResearchService"]

KEY_BYTES = 32
# A project's name is in URLs (/projects/{name}/dicom-web) and file names.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_MAX_COHORT = 100_000
_STUDY, _PATIENT = "0020000D", "00100020"
_SUBJECT_PREFIX = "research-project:"


@dataclass(frozen=True)
class Project:
    """A research project as the index keeps it (its key stays wrapped)."""

    id: int
    tenant: str
    name: str
    profile_toml: str
    cohort_query: str | None
    created_at: int
    created_by: str
    key_subject: str
    wrapped: WrappedKey
    members: tuple[str, ...] = ()
    study_count: int = 0

    @property
    def profile(self) -> Profile:
        return parse_profile(self.profile_toml)

    def summary(self) -> dict[str, Any]:
        """What ``nubis research project show`` prints: no key, no patient."""
        profile = self.profile
        return {
            "name": self.name,
            "tenant": self.tenant,
            "profile": profile.name,
            "profile_version": profile.version,
            "cohort": self.cohort_query or "a list of studies",
            "studies": self.study_count,
            "members": list(self.members),
            "created_by": self.created_by,
            "created_at": self.created_at,
        }


class ProjectKey:
    """A project's unwrapped key and what is drawn from it: pseudonyms, the re-identification
    table's lookup HMAC and sealing key."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self._lookup_key = hmac.new(key, b"nubis reid lookup", hashlib.sha256).digest()
        self._seal = AESGCM(hmac.new(key, b"nubis reid seal", hashlib.sha256).digest())

    def pseudonyms(self) -> Pseudonyms:
        return Pseudonyms(self.key)

    def lookup(self, value: str) -> str:
        return hmac.new(self._lookup_key, value.strip().encode(), hashlib.sha256).hexdigest()

    def seal(self, original: dict[str, str], lookup: str) -> bytes:
        nonce = secrets.token_bytes(12)
        return nonce + self._seal.encrypt(nonce, json.dumps(original).encode(), lookup.encode())

    def unseal(self, sealed: bytes, lookup: str) -> dict[str, str]:
        try:
            plain = self._seal.decrypt(sealed[:12], sealed[12:], lookup.encode())
        except InvalidTag as exc:
            raise KeyUnavailable("a re-identification entry does not authenticate") from exc
        found: dict[str, str] = json.loads(plain)
        return found


@dataclass(frozen=True)
class Reidentified:
    """What an admin's re-identification lookup found."""

    kind: str  # patient, study
    patient_id: str
    study_uids: tuple[str, ...]


def _now_ms() -> int:
    return int(time.time() * 1000)


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise BadRequest(
            f"project name {name!r}: 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class ResearchService:
    def __init__(
        self,
        index: Index,
        guard: Guard,
        query: QueryService,
        keys: KeyProvider | None,
        *,
        max_limit: int = 1000,
    ) -> None:
        self.index = index
        self.guard = guard
        self.query = query
        self.keys = keys
        self.max_limit = max_limit

    # ------------------------------------------------------------------ admins
    def create(
        self,
        who: Principal,
        name: str,
        profile_toml: str,
        *,
        cohort_query: str | None = None,
        study_uids: tuple[str, ...] = (),
        members: tuple[str, ...] = (),
    ) -> Project:
        """A new project whose cohort is the studies ``cohort_query`` (a QIDO-RS study query
        string) matches now, or ``study_uids``; BadRequest for a bad name, profile or query,
        a study that is not in the tenant, or an empty cohort; Conflict for a name taken."""
        check_name(name)
        decision = self.guard.authorize(who, Action.ADMIN, f"create research project {name}")
        assert decision.scope is not None
        tenant = decision.scope.partition
        parse_profile(profile_toml)
        if (cohort_query is None) == (not study_uids):
            raise BadRequest("a cohort is a query or a list of studies: give one of them")
        if self._find(tenant, name) is not None:
            raise Conflict(f"research project {name} exists")
        cohort = self._resolve(who, cohort_query, study_uids)
        if not cohort:
            raise BadRequest("the cohort is empty: no study matches")
        for member in members:
            self._check_member(tenant, member)
        if self.keys is None:
            raise KeyUnavailable(
                "research projects need the archive's keyring (encrypt_at_rest or keyring) to "
                "keep their keys"
            )
        project_key, subject, wrapped = self.new_key(tenant, _SUBJECT_PREFIX)
        reid = _reid_rows(project_key, cohort)
        event = audit_events.security_configuration_changed(
            who,
            f"nubis:research-project/{tenant}/{name}",
            name,
            description=f"research project {name} made: {len(cohort)} studies, "
            f"members {', '.join(members) or 'none'}",
            request_id=who.request_id,
        )
        record = self.guard.record_job(event)
        now = _now_ms()

        def job(conn: Connection) -> int:
            project_id = conn.execute(
                insert(research_projects)
                .values(
                    tenant=tenant,
                    name=name,
                    profile_toml=profile_toml,
                    cohort_query=cohort_query,
                    key_subject=subject,
                    key_id=wrapped.key_id,
                    key_wrapped_subject=wrapped.subject,
                    key_ciphertext=wrapped.ciphertext,
                    created_at=now,
                    created_by=who.id,
                )
                .returning(research_projects.c.id)
            ).scalar_one()
            conn.execute(
                insert(research_studies),
                [{"project_id": project_id, "study_uid": uid} for uid in cohort],
            )
            conn.execute(
                insert(research_reid),
                [{"project_id": project_id, **row} for row in reid],
            )
            for member in dict.fromkeys(members):
                conn.execute(insert(research_members).values(project_id=project_id, user_id=member))
            if record is not None:
                record(conn)
            return int(project_id)

        self.index.write(job)
        return self.show(who, name)

    def add_member(self, who: Principal, name: str, user_id: str) -> None:
        """Make ``user_id`` (a user of the tenant) a member; audited as a role change."""
        decision = self.guard.authorize(who, Action.ADMIN, f"add a member to research {name}")
        assert decision.scope is not None
        project = self._require(decision.scope.partition, name)
        self._check_member(project.tenant, user_id)
        if user_id in project.members:
            return
        event = audit_events.account_changed(
            who,
            user_id,
            roles=True,
            description=f"{user_id} made a member of research project {name}",
            request_id=who.request_id,
        )
        self.index.write(
            lambda conn: _add_member(conn, project.id, user_id, self.guard.record_job(event))
        )

    def projects(self, who: Principal) -> list[Project]:
        decision = self.guard.authorize(who, Action.ADMIN, "list research projects")
        assert decision.scope is not None
        with self.index.reading() as conn:
            names = conn.execute(
                select(research_projects.c.name)
                .where(research_projects.c.tenant == decision.scope.partition)
                .order_by(research_projects.c.name)
            ).scalars()
            return [p for p in (self._find(decision.scope.partition, n) for n in names) if p]

    def show(self, who: Principal, name: str) -> Project:
        decision = self.guard.authorize(who, Action.ADMIN, f"show research project {name}")
        assert decision.scope is not None
        return self._require(decision.scope.partition, name)

    def reidentify(self, who: Principal, name: str, value: str) -> Reidentified:
        """The patient behind a pseudonym (or the study behind a remapped Study Instance UID)
        of the project: admins only, each lookup recorded (Patient Record, read) with the
        patient it revealed, or as a failure; NotFound when the project never issued it."""
        what = f"re-identification of {value} in research project {name}"
        decision = self.guard.authorize(who, Action.ADMIN, what)
        assert decision.scope is not None
        project = self._require(decision.scope.partition, name)
        project_key = self.key_of(project)
        lookup = project_key.lookup(value)
        with self.index.reading() as conn:
            row = conn.execute(
                select(research_reid.c.kind, research_reid.c.sealed).where(
                    research_reid.c.project_id == project.id, research_reid.c.lookup == lookup
                )
            ).first()
        if row is None:
            self.guard.record(
                audit_events.patient_record(
                    who,
                    patient_id="",
                    action=EventAction.READ,
                    outcome=EventOutcome.MINOR_FAILURE,
                    request_id=who.request_id,
                    description=f"{what}: not issued by this project",
                )
            )
            raise NotFound(f"research project {name} issued no pseudonym or UID {value}")
        original = project_key.unseal(row.sealed, lookup)
        studies = original.get("study_uids") or original.get("study_uid", "")
        found = Reidentified(row.kind, original["patient_id"], tuple(studies.split("\\")))
        self.guard.record(
            audit_events.patient_record(
                who,
                patient_id=found.patient_id,
                study_uids=found.study_uids,
                action=EventAction.READ,
                request_id=who.request_id,
                description=what,
            )
        )
        return found

    # ------------------------------------------------------------------ the view and exports
    def key_of(self, project: Project) -> ProjectKey:
        """The project's key, unwrapped by the archive's key provider."""
        return self.unwrap_key(project.key_subject, project.wrapped)

    def new_key(self, tenant: str, prefix: str) -> tuple[ProjectKey, str, WrappedKey]:
        """A new random key wrapped by the archive's key provider as a key of its own (subject
        ``prefix`` + a random id, the id as authenticated data): a project's, or a
        de-identified share link's."""
        if self.keys is None:
            raise KeyUnavailable(
                "de-identification keys need the archive's keyring (encrypt_at_rest or "
                "keyring) to be kept"
            )
        key = secrets.token_bytes(KEY_BYTES)
        subject = secrets.token_hex(16)
        wrapped = self.keys.wrap(
            key, partition=tenant, patient_id=prefix + subject, aad=_aad(subject)
        )
        return ProjectKey(key), subject, wrapped

    def unwrap_key(self, subject: str, wrapped: WrappedKey) -> ProjectKey:
        """A key :meth:`new_key` made, unwrapped by the archive's key provider."""
        if self.keys is None:
            raise KeyUnavailable("the archive's keyring is not configured")
        return ProjectKey(self.keys.unwrap(wrapped, aad=_aad(subject)))

    def project_named(self, tenant: str, name: str) -> Project:
        """A project of ``tenant`` by name, for a caller already authorized (a share link
        being made names the project whose profile and key it reads with); NotFound."""
        return self._require(tenant, name)

    def project_by_id(self, tenant: str, project_id: int) -> Project:
        """A project of ``tenant`` by id (a de-identified share link's); NotFound."""
        project = self._find(tenant, None, project_id)
        if project is None:
            raise NotFound("the research project of this share link no longer exists")
        return project

    def membership(self, who: Principal, name: str) -> Project:
        """The project ``who`` asks for by name, if ``who`` is a member in its tenant; NotFound
        otherwise, the same for a project that does not exist (no caller learns which
        projects exist from the answer). Authorized as DEIDENTIFY, recorded if refused."""
        decision = self.guard.authorize(who, Action.DEIDENTIFY, f"read research project {name}")
        assert decision.scope is not None
        project = self._find(decision.scope.partition, name)
        if project is None or who.id not in project.members:
            raise NotFound(f"no research project {name} of which {who.id} is a member")
        return project

    def project(self, who: Principal, name: str) -> Project:
        """The project as a job of ``who`` (an admin exporting it) sees it."""
        decision = self.guard.authorize(who, Action.EXPORT, f"export research project {name}")
        assert decision.scope is not None
        return self._require(decision.scope.partition, name)

    def original_study(self, project: Project, key: ProjectKey, remapped: str) -> str | None:
        """The stored Study Instance UID of a remapped one of the project, or None."""
        lookup = key.lookup(remapped)
        with self.index.reading() as conn:
            row = conn.execute(
                select(research_reid.c.sealed).where(
                    research_reid.c.project_id == project.id,
                    research_reid.c.lookup == lookup,
                    research_reid.c.kind == "study",
                )
            ).first()
        if row is None:
            return None
        return key.unseal(row.sealed, lookup)["study_uid"]

    def cohort(self, project: Project) -> list[str]:
        """The cohort's Study Instance UIDs, in a stable order."""
        with self.index.reading() as conn:
            return list(
                conn.execute(
                    select(research_studies.c.study_uid)
                    .where(research_studies.c.project_id == project.id)
                    .order_by(research_studies.c.study_uid)
                ).scalars()
            )

    # ------------------------------------------------------------------ inside
    def _resolve(
        self, who: Principal, cohort_query: str | None, study_uids: tuple[str, ...]
    ) -> dict[str, str]:
        """Study UID -> Patient ID of the cohort, through the admin's own scoped query (so the
        resolution is authorized and recorded as a query)."""
        if cohort_query is not None:
            # "Modality=CT" reads as studies with a CT series (a study has no Modality).
            params = [
                ("ModalitiesInStudy" if k == "Modality" else k, v)
                for k, v in parse_qsl(cohort_query, keep_blank_values=True)
            ]
            text = cohort_query
        else:
            params = [("StudyInstanceUID", ",".join(dict.fromkeys(study_uids)))]
            text = f"StudyInstanceUID of {len(study_uids)} studies"
        query = parse_qido(
            Level.STUDY,
            [*params, ("includefield", "PatientID")],
            max_limit=self.max_limit,
        )
        scoped = self.query.scoped(who, query, text=text)
        cohort: dict[str, str] = {}
        for item in self.query.matches(scoped):
            cohort[_value(item, _STUDY)] = _value(item, _PATIENT)
            if len(cohort) > _MAX_COHORT:
                raise BadRequest(f"a cohort holds at most {_MAX_COHORT} studies")
        missing = [uid for uid in study_uids if uid not in cohort]
        if missing:
            raise BadRequest(f"not studies of the tenant: {', '.join(missing[:10])}")
        return cohort

    def _check_member(self, tenant: str, user_id: str) -> None:
        with self.index.reading() as conn:
            found = conn.execute(
                select(users.c.tenant).where(users.c.name == user_id)
            ).scalar_one_or_none()
        if found != tenant:
            raise BadRequest(f"no user {user_id} in tenant {tenant}")

    def _require(self, tenant: str, name: str) -> Project:
        project = self._find(tenant, name)
        if project is None:
            raise NotFound(f"no research project {name}")
        return project

    def _find(self, tenant: str, name: str | None, project_id: int | None = None) -> Project | None:
        which = (
            research_projects.c.name == name
            if project_id is None
            else research_projects.c.id == project_id
        )
        with self.index.reading() as conn:
            row = conn.execute(
                select(research_projects).where(research_projects.c.tenant == tenant, which)
            ).first()
            if row is None:
                return None
            members = tuple(
                conn.execute(
                    select(research_members.c.user_id)
                    .where(research_members.c.project_id == row.id)
                    .order_by(research_members.c.user_id)
                ).scalars()
            )
            count = conn.execute(
                select(func.count()).where(research_studies.c.project_id == row.id)
            ).scalar_one()
        return Project(
            id=row.id,
            tenant=row.tenant,
            name=row.name,
            profile_toml=row.profile_toml,
            cohort_query=row.cohort_query,
            created_at=row.created_at,
            created_by=row.created_by,
            key_subject=row.key_subject,
            wrapped=WrappedKey(row.key_id, row.key_wrapped_subject, bytes(row.key_ciphertext)),
            members=members,
            study_count=int(count),
        )


def _aad(subject: str) -> bytes:
    return b"nubis research project key " + subject.encode()


def _reid_rows(key: ProjectKey, cohort: dict[str, str]) -> list[dict[str, Any]]:
    """One row per remapped study and one per patient pseudonym (with the patient's studies)."""
    pseudonyms = key.pseudonyms()
    rows = []
    by_patient: dict[str, list[str]] = {}
    for study_uid, patient_id in cohort.items():
        by_patient.setdefault(patient_id, []).append(study_uid)
        lookup = key.lookup(pseudonyms.uid(study_uid))
        original = {"patient_id": patient_id, "study_uid": study_uid}
        rows.append({"lookup": lookup, "kind": "study", "sealed": key.seal(original, lookup)})
    for patient_id, studies in by_patient.items():
        lookup = key.lookup(pseudonyms.patient_id(patient_id))
        original = {"patient_id": patient_id, "study_uids": "\\".join(studies)}
        rows.append({"lookup": lookup, "kind": "patient", "sealed": key.seal(original, lookup)})
    return rows


def _add_member(conn: Connection, project_id: int, user_id: str, record: Any) -> None:
    conn.execute(insert(research_members).values(project_id=project_id, user_id=user_id))
    if record is not None:
        record(conn)


def _value(item: dict[str, Any], tag: str) -> str:
    values = (item.get(tag) or {}).get("Value") or [""]
    return str(values[0])


def scoped_to(query: Query, project: Project) -> Query:
    """``query`` limited to the project's cohort in its tenant."""
    from dataclasses import replace

    return replace(query, partition=project.tenant, project_id=project.id, grantee=None)
