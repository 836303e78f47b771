"""The audit log for people: search it, see how its chain stands, have it verified.

Like ``GET /audit/records`` (nubis.web.audit_routes), every call needs the AUDIT action, which
only auditors and admins of the home tenant hold (the records name every tenant's patients and
users); a refusal is recorded as a Security Alert. A search goes through
:meth:`AuditTrail.read`, which records the read (Audit Log Used, PS3.15 A.5.3.1) before
anything is returned.

Verifying walks the whole chain, about 20,000 records a second on one core: longer than a page
may take once the trail is large. So it runs as an ``audit-verify`` job (nubis.jobs.kinds) with
progress like any job, and the status shows the latest run's report next to the head of the
chain and its last signed checkpoint, which cost two indexed reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nubis.jobs.schedule import AUDIT_VERIFY
from nubis.jobs.store import Job, JobStore
from nubis.security.audit import AuditRecord, AuditTrail, Checkpoint
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard

MAX_PAGE = 200


@dataclass(frozen=True)
class AuditStatus:
    """The chain now: its length, its last signed head, and the latest verification."""

    records: int
    checkpoints: int
    last_checkpoint: Checkpoint | None
    verification: Job | None  # the latest audit-verify job, finished or not

    @property
    def unsigned(self) -> int:
        signed = self.last_checkpoint.seq if self.last_checkpoint else 0
        return max(self.records - signed, 0)


class AuditLog:
    """Search, status and verification of the audit trail under the Guard."""

    def __init__(
        self,
        trail: AuditTrail,
        guard: Guard,
        jobs: JobStore,
        *,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.trail = trail
        self.guard = guard
        self.jobs = jobs
        self.wake = wake

    def authorize(self, who: Principal, what: str) -> None:
        """Whether ``who`` may use the audit log (AUDIT); Forbidden (recorded) otherwise."""
        self.guard.authorize(who, Action.AUDIT, what)

    def search(
        self,
        who: Principal,
        *,
        user_id: str | None = None,
        patient_id: str | None = None,
        event_code: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before_seq: int | None = None,
        limit: int = 50,
    ) -> list[AuditRecord]:
        """Matching records, newest first, older than ``before_seq`` (the next page); the read
        is recorded first. ``since``/``until`` are UTC time prefixes (``YYYY-MM-DD...``)."""
        self.guard.authorize(who, Action.AUDIT, "read the audit log")
        return self.trail.read(
            who,
            front_door=who.via,
            request_id=who.request_id,
            limit=max(1, min(limit, MAX_PAGE)),
            user_id=user_id or None,
            patient_id=patient_id or None,
            event_code=event_code or None,
            since=since,
            until=until,
            before_seq=before_seq,
            newest_first=True,
        )

    def status(self, who: Principal) -> AuditStatus:
        self.guard.authorize(who, Action.AUDIT, "see the audit log's status")
        last, count = self.trail.last_checkpoint()
        runs = self.jobs.list(limit=1, kind=AUDIT_VERIFY)
        return AuditStatus(self.trail.head()[0], count, last, runs[0] if runs else None)

    def verify(self, who: Principal) -> int:
        """Queue a verification of the whole chain (an ``audit-verify`` job); its id."""
        self.guard.authorize(who, Action.AUDIT, "verify the audit log")
        job_id = self.jobs.enqueue(AUDIT_VERIFY, {}, created_by=who.id)
        assert job_id is not None  # no unique key: always queued
        if self.wake is not None:
            self.wake()
        return job_id


__all__ = ["AuditLog", "AuditStatus"]
