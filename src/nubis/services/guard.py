"""Authorization and audit for the services: every service call passes through a Guard.

The services (store, retrieve, query, maintenance) call :meth:`Guard.authorize` before they touch
data and :meth:`Guard.record` after; front doors only turn their caller into a
:class:`~nubis.security.policy.Principal`. So DICOMweb, DIMSE and the CLI obey one decision and
leave one kind of record (design guide rule 3).

A refused authorization is recorded (Security Alert, Use of Restricted Function) before
Forbidden is raised; an emergency override (break-glass) is logged at WARNING and recorded
(Security Alert, Emergency Override Started) before the access it allows. Recording fails
closed: when the audit trail cannot commit, ``AuditUnavailable`` (503 / 0xA700) propagates and
the access does not happen.

On a read-only replica (``replica_of``, nubis.services.replica_role) every change (WRITE or
DELETE, and corrections, which ask :meth:`Guard.refuse_change` themselves) is refused the same
way, recorded, unless it comes from the primary's replication credential.

Where the record does not depend on the outcome (a query: what was asked, not what was found),
:meth:`Guard.recording` commits it while the service does its work and returns only once it is
committed: the client waits for the longer of the two instead of their sum, and still nothing
reaches it unless the record is durable. Reads and queries whose records the trail commits in
batches (nubis.security.audit_reads) are queued before the work and not waited for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from nubis.errors import Forbidden
from nubis.model.audit import AuditEvent
from nubis.ports.audit import AuditReceipt, AuditRecorder
from nubis.security import audit_events
from nubis.security.policy import Action, AuthPolicy, Decision, Principal

if TYPE_CHECKING:
    from nubis.services.replica_role import ReplicaRole

log = logging.getLogger("nubis.security")

# What a read-only replica refuses to all but the primary's replication credential.
CHANGES = Action.WRITE | Action.DELETE


class Guard:
    """The policy and the audit trail, as the services use them."""

    def __init__(self, policy: AuthPolicy, audit: AuditRecorder | None) -> None:
        self.policy = policy
        # None only where no trail exists (unit tests of a single service).
        self.audit = audit
        # Set when this archive is a replica (replica_of): it refuses changes until promoted.
        self.replica: ReplicaRole | None = None
        self._recorders = ThreadPoolExecutor(max_workers=8, thread_name_prefix="nubis-audit")

    def authorize(
        self,
        who: Principal,
        action: Action,
        what: str,
        *,
        patient_id: str | None = None,
        study_uids: tuple[str, ...] = (),
    ) -> Decision:
        """The decision for ``who`` doing ``action``; Forbidden (recorded) when refused.

        ``what`` describes the attempt for the audit record (``"retrieve study 1.2.3"``). The
        log names it too, unless ``patient_id`` is given: a patient is named in audit records
        only, never in a log line, so callers name the patient through ``patient_id`` alone.
        """
        decision = self.policy.decide(who, action)
        logged = what if patient_id is None else f"{action.name} on a patient's data"
        if not decision.allowed:
            log.warning("refused %s to %s via %s: %s", logged, who.id, who.via, decision.reason)
            self.record(
                audit_events.access_refused(
                    who, f"{what}: {decision.reason}", request_id=who.request_id
                )
            )
            raise Forbidden(decision.reason)
        if action & CHANGES:
            self.refuse_change(who, what)
        if decision.break_glass:
            # The reason is free text and may name the patient: it goes to the audit record
            # only, which the request id finds.
            log.warning(
                "BREAK-GLASS: %s (%s) via %s from %s: %s; reason in the audit trail "
                "(request id %s)",
                who.id,
                ", ".join(sorted(who.roles)),
                who.via,
                who.peer or "?",
                logged,
                who.request_id or "-",
            )
            self.record(
                audit_events.break_glass(
                    who,
                    decision.break_glass,
                    patient_id=patient_id,
                    study_uids=study_uids,
                    request_id=who.request_id,
                )
            )
        return decision

    def refuse_change(self, who: Principal, what: str) -> None:
        """On a read-only replica, ReadOnlyReplica (recorded) unless ``who`` may change it.
        ``what`` (which may name a patient) goes to the audit record only."""
        if self.replica is None:
            return
        try:
            self.replica.refuse_change(who)
        except Forbidden as exc:
            log.warning("refused a change to %s via %s: read-only replica", who.id, who.via)
            self.record(
                audit_events.access_refused(who, f"{what}: {exc.reason}", request_id=who.request_id)
            )
            raise

    def permits(self, who: Principal, action: Action) -> bool:
        """Whether ``who`` may do ``action``, recording nothing: for a service choosing how
        wide a listing is (one's own share links, or the tenant's for an admin), never for
        letting an access through, which is :meth:`authorize`'s."""
        return self.policy.decide(who, action).allowed

    def record(self, *events: AuditEvent) -> list[AuditReceipt]:
        """The one hook through which services record (fail closed, see the module docs);
        several events commit together. Their places in the chain (none without a trail):
        an erasure certificate names its record's."""
        if self.audit is None or not events:
            return []
        if len(events) == 1:
            return [self.audit.record(events[0])]
        return self.audit.record_many(list(events))

    def record_job(self, *events: AuditEvent) -> Callable[[Any], object] | None:
        """An index write job recording ``events``, to commit inside the write it accounts for
        (``Index.store(..., also=...)``): the write and its records commit together or not at
        all. None when there is no trail."""
        return None if self.audit is None else self.audit.append_job(list(events))

    @contextmanager
    def recording(self, event: AuditEvent) -> Iterator[None]:
        """Record ``event`` while the block runs; leave only once it is committed.

        Raises ``AuditUnavailable`` on leaving when the record could not be committed, so the
        block's result is never handed to the caller: use it only around work that gives
        nothing out before the block ends.
        """
        if self.audit is None:
            yield
            return
        if self.audit.is_deferred(event):
            self.audit.record(event)  # queued at once, or refused now if the trail is failing
            yield
            return
        pending = self._recorders.submit(self.audit.record, event)
        try:
            yield
        finally:
            pending.result()


__all__ = ["Guard"]
