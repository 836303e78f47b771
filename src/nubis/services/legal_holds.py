"""Legal holds: a study, a patient or a whole tenant that nobody may delete until released.

A hold is a row in ``legal_holds`` (nubis.index.holds_sql); the deletions read it in their
own transaction, so nothing a hold covers goes: DELETE (``Index.erase``: 409 naming the hold
by its id), the retention job (which skips and reports it), and key shredding
(:meth:`LegalHolds.refuse_shred`, called by ``nubis keys shred-patient``). A replica applies
deletes through its own DELETE, so a hold placed there too stops them there.

Placing and releasing are admin acts (ADMIN), each recorded in the same transaction as the
change: Patient Record (PS3.15 A.5.3.9, Update) naming the patient and the study for a study
or patient hold, Security Alert (Security Configuration) for a tenant's. The admin's reason
goes into the hold and its audit record, never into a refusal, which may reach any client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from nubis.errors import BadRequest, Conflict, NotFound, OnLegalHold
from nubis.index import holds_sql
from nubis.index.database import Index
from nubis.index.holds_sql import Hold
from nubis.index.schema import legal_holds, studies
from nubis.model.audit import AuditEvent, EventAction, EventOutcome, EventType
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard

__all__ = ["HoldTarget", "LegalHolds"]

MAX_REASON = 1000


@dataclass(frozen=True)
class HoldTarget:
    """What a hold covers: a study, a patient, or (neither) the whole tenant."""

    study_uid: str | None = None
    patient_id: str | None = None

    def __post_init__(self) -> None:
        if self.study_uid is not None and self.patient_id is not None:
            raise BadRequest("a hold names a study or a patient, not both")

    @property
    def description(self) -> str:
        if self.study_uid is not None:
            return f"study {self.study_uid}"
        return "a patient" if self.patient_id is not None else "the whole tenant"


class LegalHolds:
    def __init__(self, index: Index, guard: Guard) -> None:
        self.index = index
        self.guard = guard

    def place(self, who: Principal, target: HoldTarget, reason: str) -> Hold:
        """Hold ``target`` in ``who``'s tenant; NotFound for a study the tenant lacks."""
        reason = _reason(reason)
        decision = self.guard.authorize(
            who,
            Action.ADMIN,
            f"place a legal hold on {target.description}",
            patient_id=target.patient_id,
            study_uids=(target.study_uid,) if target.study_uid else (),
        )
        assert decision.scope is not None
        partition = decision.scope.partition

        def job(conn: Connection) -> int:
            patient_id = target.patient_id
            if target.study_uid is not None:
                found = conn.execute(
                    select(studies.c.patient_id).where(
                        studies.c.partition == partition, studies.c.study_uid == target.study_uid
                    )
                ).first()
                if found is None:
                    raise NotFound(f"no study {target.study_uid}")
                patient_id = found.patient_id
            result = conn.execute(
                insert(legal_holds).values(
                    partition=partition,
                    patient_id=target.patient_id,
                    study_uid=target.study_uid,
                    reason=reason,
                    placed_by=who.id,
                    placed_at=int(time.time() * 1000),
                )
            )
            assert result.inserted_primary_key is not None
            hold_id = int(result.inserted_primary_key[0])
            self._record(
                conn,
                _event(who, hold_id, target, patient_id, f"placed: {reason}"),
            )
            return hold_id

        hold_id = self.index.write(job)
        return self._get(partition, hold_id)

    def release(self, who: Principal, hold_id: int, reason: str) -> Hold:
        reason = _reason(reason)
        decision = self.guard.authorize(who, Action.ADMIN, f"release legal hold {hold_id}")
        assert decision.scope is not None
        partition = decision.scope.partition

        def job(conn: Connection) -> None:
            row = conn.execute(
                select(legal_holds).where(
                    legal_holds.c.partition == partition, legal_holds.c.id == hold_id
                )
            ).first()
            if row is None:
                raise NotFound(f"no legal hold {hold_id}")
            hold = holds_sql.hold_from_row(row)
            if not hold.active:
                raise Conflict(f"legal hold {hold_id} was released already")
            conn.execute(
                update(legal_holds)
                .where(legal_holds.c.id == hold_id)
                .values(
                    released_by=who.id,
                    released_at=int(time.time() * 1000),
                    release_reason=reason,
                )
            )
            patient_id = hold.patient_id
            if hold.study_uid is not None:
                patient_id = conn.execute(
                    select(studies.c.patient_id).where(
                        studies.c.partition == partition, studies.c.study_uid == hold.study_uid
                    )
                ).scalar()
            target = HoldTarget(hold.study_uid, hold.patient_id)
            self._record(conn, _event(who, hold_id, target, patient_id, f"released: {reason}"))

        self.index.write(job)
        return self._get(partition, hold_id)

    def list(self, who: Principal, *, include_released: bool = False) -> list[Hold]:
        """The tenant's holds, newest first; recorded as a read of each patient named."""
        decision = self.guard.authorize(who, Action.ADMIN, "list legal holds")
        assert decision.scope is not None
        stmt = (
            select(legal_holds)
            .where(legal_holds.c.partition == decision.scope.partition)
            .order_by(legal_holds.c.id.desc())
        )
        if not include_released:
            stmt = stmt.where(legal_holds.c.released_at.is_(None))
        with self.index.reading() as conn:
            holds = [holds_sql.hold_from_row(row) for row in conn.execute(stmt)]
        self.guard.record(
            *(
                audit_events.patient_record(
                    who,
                    patient_id=h.patient_id,
                    action=EventAction.READ,
                    request_id=who.request_id,
                    description=f"legal hold {h.id} listed",
                )
                for h in holds
                if h.patient_id is not None
            )
        )
        return holds

    def refuse_shred(self, who: Any, partition: str, patient_id: str) -> None:
        """OnLegalHold, recorded as a Security Alert, if a hold covers the patient, any study
        of theirs, or the tenant: the check of a key shred, whose caller has authorized it
        (``nubis keys shred-patient``)."""
        with self.index.reading() as conn:
            hold = holds_sql.covering_patient(conn, partition, patient_id)
        if hold is not None:
            refused = OnLegalHold(hold.id, hold.level)
            self.guard.record(
                audit_events.security_alert(
                    who,
                    EventType.SECURITY_CONFIGURATION,
                    outcome=EventOutcome.MINOR_FAILURE,
                    description=f"crypto-shred of a patient's keys refused: {refused.reason}",
                    objects=[audit_events.patient_object(patient_id)],
                )
            )
            raise refused

    def covering(self, partition: str, study_uid: str) -> Hold | None:
        """The hold covering a study, for the retention job's report (which has authorized)."""
        with self.index.reading() as conn:
            return holds_sql.covering_study(conn, partition, study_uid)

    def _record(self, conn: Connection, event: AuditEvent) -> None:
        record = self.guard.record_job(event)
        if record is not None:
            record(conn)

    def _get(self, partition: str, hold_id: int) -> Hold:
        with self.index.reading() as conn:
            row = conn.execute(
                select(legal_holds).where(
                    legal_holds.c.partition == partition, legal_holds.c.id == hold_id
                )
            ).first()
        assert row is not None
        return holds_sql.hold_from_row(row)


def _event(
    who: Principal, hold_id: int, target: HoldTarget, patient_id: str | None, what: str
) -> AuditEvent:
    description = f"legal hold {hold_id} on {target.description} {what}"
    if patient_id is None and target.study_uid is None:
        return audit_events.security_configuration_changed(
            who, f"legal-hold:{hold_id}", "Legal hold", description=description,
            request_id=who.request_id,
        )  # fmt: skip
    return audit_events.patient_record(
        who,
        # A study without a Patient ID is named by its UID alone.
        patient_id=patient_id or "",
        study_uids=(target.study_uid,) if target.study_uid else (),
        action=EventAction.UPDATE,
        request_id=who.request_id,
        description=description,
    )


def _reason(reason: str) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise BadRequest("a legal hold needs a reason")
    if len(text) > MAX_REASON or not text.isprintable():
        raise BadRequest(f"the reason must be printable text of at most {MAX_REASON} characters")
    return text
