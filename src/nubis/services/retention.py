"""Retention: the studies the rules let go, the ``retention`` job that erases them, and the
erasure certificates admins read and verify (docs/retention.md).

The job erases through :meth:`Maintenance.erase`, DELETE's own path: the same authorization
(as ``retention:<tenant>``, an admin of the tenant), the same Study Deleted record, the same
replication outbox entry in the erasure's transaction, the same legal-hold check inside it,
and a certificate naming the rule and the admin who approved the run. A deleting run needs
an approval: ``nubis retention run`` (whose operator is the approver), or
``retention_approval = automatic`` (the rules file is then the approval, named as such).
Otherwise, and with ``dry_run``, the job only reports what is due: the list an admin
reviews. The cursor is the last study id looked at, so a run taken over resumes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from nubis.errors import NotFound, OnLegalHold
from nubis.index.database import Index
from nubis.jobs.context import JobContext, JobFailed
from nubis.model.audit import EventAction
from nubis.retention import certificates
from nubis.retention.certificates import Certificate, CertificateCheck
from nubis.retention.evaluate import Candidate, due_studies
from nubis.retention.rules import Rule
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard
from nubis.services.legal_holds import LegalHolds
from nubis.services.maintenance import Maintenance

__all__ = ["KIND", "Retention", "RetentionReport", "retention_principal"]

KIND = "retention"
# At most this many studies are named in a job's result (the counts cover them all).
MAX_LISTED = 1000


@dataclass(frozen=True)
class RetentionReport:
    """What is due today: ``due`` may go, ``held`` are due but under a legal hold."""

    today: date
    studies_read: int
    due: list[Candidate]
    held: list[tuple[Candidate, int]]


def retention_principal(tenant: str) -> Principal:
    """Who the job erases as: an admin of the study's tenant, recorded as ``retention:<tenant>``."""
    return Principal(
        f"retention:{tenant}", tenant, frozenset({"admin"}), via="system", auth_method="system"
    )


class Retention:
    def __init__(
        self,
        index: Index,
        guard: Guard,
        maintenance: Maintenance,
        holds: LegalHolds,
        rules: Callable[[], list[Rule]],
        *,
        automatic: bool = False,
        public_keys: Callable[[], dict[str, Ed25519PublicKey]] | None = None,
    ) -> None:
        self.index = index
        self.guard = guard
        self.maintenance = maintenance
        self.holds = holds
        self.rules = rules
        self.automatic = automatic
        self.public_keys = public_keys

    # ------------------------------------------------------------------ the review list
    def report(self, who: Principal, today: date | None = None) -> RetentionReport:
        """Every tenant's due studies: the archive's operators only (OPERATE)."""
        self.guard.authorize(who, Action.OPERATE | Action.ADMIN, "list studies due for deletion")
        today = today or _today()
        read, due, held = 0, [], []
        for _, count, page in due_studies(self.index, self.rules(), today):
            read += count
            for candidate in page:
                hold = self.holds.covering(candidate.tenant, candidate.study_uid)
                if hold is None:
                    due.append(candidate)
                else:
                    held.append((candidate, hold.id))
        # A query of the index by the rules, recorded as one (its text names the day).
        self.guard.record(
            audit_events.query(
                who, f"retention report of {today.isoformat()}", request_id=who.request_id
            )
        )
        return RetentionReport(today, read, due, held)

    # ------------------------------------------------------------------ the job
    def run(self, ctx: JobContext) -> dict[str, Any]:
        dry_run = bool(ctx.params.get("dry_run", not self.automatic))
        # The approver is who queued the job (the job table records it), never a parameter
        # anyone could write.
        approved_by = (ctx.job.created_by or "unknown") if ctx.params.get("approve") else None
        if approved_by is None and self.automatic:
            approved_by = "retention_approval=automatic"
        if not dry_run and approved_by is None:
            raise JobFailed(
                "a deleting retention run needs an admin's approval (nubis retention run) or "
                "retention_approval = automatic",
                retry_in=None,
            )
        today = date.fromisoformat(ctx.params["today"]) if "today" in ctx.params else _today()
        if not dry_run and today > _today():
            # Looking ahead is for review: a deletion before its day breaks the retention.
            raise JobFailed(
                f"a deleting retention run cannot be dated ahead ({today.isoformat()}); "
                "review a later day with a dry run",
                retry_in=None,
            )
        saved = ctx.cursor or {}
        after = int(saved.get("after", 0))
        tally: dict[str, Any] = {
            "read": 0, "due": 0, "erased": 0, "bytes": 0, "held": 0, "gone": 0,
            **saved.get("tally", {}),
        }  # fmt: skip
        listed: dict[str, list[Any]] = {
            "erased_studies": [], "due_studies": [], "held_studies": [], "certificates": [],
            **saved.get("listed", {}),
        }  # fmt: skip

        def note(kind: str, entry: Any) -> None:
            if len(listed[kind]) < MAX_LISTED:
                listed[kind].append(entry)

        for last, count, page in due_studies(self.index, self.rules(), today, after_pk=after):
            for candidate in page:
                ctx.check()
                tally["due"] += 1
                entry = {
                    "tenant": candidate.tenant,
                    "study_uid": candidate.study_uid,
                    "rule": candidate.rule,
                    "due_since": candidate.due_since.isoformat(),
                }
                hold = self.holds.covering(candidate.tenant, candidate.study_uid)
                if hold is not None:
                    tally["held"] += 1
                    note("held_studies", {**entry, "hold": hold.id})
                    continue
                if dry_run:
                    note("due_studies", entry)
                    continue
                try:
                    erasure = self.maintenance.erase(
                        retention_principal(candidate.tenant),
                        candidate.study_uid,
                        cause={
                            "kind": "retention",
                            "rule": candidate.rule,
                            "due_since": candidate.due_since.isoformat(),
                            "approved_by": approved_by,
                            "job": ctx.job.id,
                        },
                    )
                except OnLegalHold as exc:  # placed since the page was read
                    tally["held"] += 1
                    note("held_studies", {**entry, "hold": exc.hold_id})
                    continue
                except NotFound:  # deleted since the page was read
                    tally["gone"] += 1
                    continue
                tally["erased"] += 1
                tally["bytes"] += erasure.bytes
                note("erased_studies", entry)
                if erasure.certificate_id is not None:
                    note("certificates", erasure.certificate_id)
            tally["read"] += count
            ctx.progress(tally["read"], cursor={"after": last, "tally": tally, "listed": listed})
        return {"dry_run": dry_run, "approved_by": approved_by, "today": today.isoformat(),
                **tally, **{k: v for k, v in listed.items() if v}}  # fmt: skip

    # ------------------------------------------------------------------ certificates
    # Certificates are evidence of the audit trail's kind and span every tenant: AUDIT, which
    # only the home tenant's auditors and admins hold; each use recorded as Audit Log Used.
    def certificates(self, who: Principal, study_uid: str | None = None) -> list[Certificate]:
        self._authorize(who, "list erasure certificates")
        return certificates.listing(self.index, None, study_uid)

    def certificate(
        self, who: Principal, certificate_id: int, *, identified: bool = False
    ) -> Certificate:
        """One certificate; ``identified``: with the erased patient's ID beside it (READ as
        well), recorded as a read of that patient's record (otherwise it carries none)."""
        what = f"read erasure certificate {certificate_id}"
        self._authorize(who, what, Action.READ if identified else Action.NONE)
        found = certificates.fetch(self.index, certificate_id, None)
        if not identified:
            return replace(found, patient_id=None)
        self.guard.record(
            audit_events.patient_record(
                who,
                patient_id=found.patient_id or "",
                study_uids=[found.study_uid],
                action=EventAction.READ,
                request_id=who.request_id,
                description=f"erasure certificate {certificate_id} read, identified",
            )
        )
        return found

    def verify(
        self,
        who: Principal,
        certificate_id: int | None = None,
        *,
        public_keys: dict[str, Ed25519PublicKey] | None = None,
        recorded_by_trail: bool = False,
    ) -> list[CertificateCheck]:
        """Check one certificate, or every one (digest, signature, audit record), against
        ``public_keys`` (default: the archive's own audit key). ``recorded_by_trail``: part of
        ``nubis audit verify``, whose use of the log the trail's verify has recorded already."""
        what = f"verify erasure certificate {certificate_id or '(all)'}"
        if recorded_by_trail:
            self.guard.authorize(who, Action.AUDIT, what)
        else:
            self._authorize(who, what)
        found = (
            [certificates.fetch(self.index, certificate_id, None)]
            if certificate_id is not None
            else certificates.listing(self.index, None, limit=1_000_000)
        )
        if public_keys is None:
            public_keys = self.public_keys() if self.public_keys is not None else {}
        return [certificates.verify(self.index, c, public_keys) for c in found]

    def _authorize(self, who: Principal, what: str, also: Action = Action.NONE) -> None:
        self.guard.authorize(who, Action.AUDIT | also, what)
        self.guard.record(audit_events.audit_log_used(who, what=what, request_id=who.request_id))


def _today() -> date:
    return datetime.now(UTC).date()
