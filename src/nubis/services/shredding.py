"""Crypto-shredding a patient: every stored object of theirs unreadable, for good.

One path for every front door (``nubis keys shred-patient``, ``POST /keys/shred-patient`` for
an admin or the replication service of a primary): authorize (ADMIN and DELETE: keys and data
at once), refuse while a correction's re-key of the patient's studies is under way, record the
attempt (Security Alert), shred, record the outcome (DICOM Study Deleted, PS3.15 A.5.3.5). If
the first record cannot be written nothing is shredded. The index rows stay (searchable,
answering 410).

With a replica (nubis.replication), the shred goes into the replication outbox in the commit
that records the erased keys in the index, one entry per indexed study of the patient (one
under no study when none is indexed), so the erasure reaches the replica in each study's order
whatever crashes after.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from nubis.errors import Conflict, NubisError, StorageUnavailable
from nubis.index import outbox_sql
from nubis.index.database import Index
from nubis.index.driver import driver_cursor
from nubis.model.audit import ActiveParticipant, EventOutcome, EventType
from nubis.model.query import Level, parse_qido
from nubis.ports.audit import AuditRecorder
from nubis.ports.keys import KeyProvider
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.corrections import CorrectionService
from nubis.services.guard import Guard
from nubis.services.query import QueryService

__all__ = ["NO_STUDY", "KeyringFailed", "ShredService", "Shredded"]

# The outbox's study for a shred of a patient the index holds no study of (its studies were
# deleted, their deletes perhaps held back on the way to the replica): erased there too.
NO_STUDY = ""


class KeyringFailed(StorageUnavailable):
    """The keyring failed while shredding (recorded): some keys may be erased already."""


@dataclass(frozen=True)
class Shredded:
    keys: int  # patient keys erased; 0: none held (nothing stored, or shredded already)
    studies: list[str]  # the patient's studies the index still holds
    begun_seq: int  # the audit record of the attempt
    outcome_recorded: bool  # False: shredded, but the trail refused the outcome's record


class ShredService:
    """``query`` finds the patient's studies (for the records and the outbox), ``corrections``
    says which are still being re-keyed; ``max_studies``: the query's limit."""

    def __init__(
        self,
        index: Index,
        keys: KeyProvider,
        guard: Guard,
        audit: AuditRecorder,
        query: QueryService,
        corrections: CorrectionService,
        *,
        max_studies: int,
    ) -> None:
        self.index = index
        self.keys = keys
        self.guard = guard
        self.audit = audit
        self.query = query
        self.corrections = corrections
        self.max_studies = max_studies

    def shred_patient(
        self,
        who: Principal,
        patient_id: str,
        *,
        front_door: str,
        participant: ActiveParticipant | None = None,
    ) -> Shredded:
        """Shred the keys of ``patient_id`` in the caller's tenant. Forbidden or Conflict (a
        re-key under way) before anything is shredded; KeyringFailed (503, recorded) when
        the keyring failed. ``participant``: who the records name, when the front door knows
        more than the principal (the CLI's login)."""
        acting = participant or audit_events.participant(who)
        what = f"crypto-shred the keys of patient {patient_id} in partition {who.tenant}"
        decision = self.guard.authorize(
            who, Action.ADMIN | Action.DELETE, what, patient_id=patient_id
        )
        assert decision.scope is not None
        partition = decision.scope.partition
        studies = self._studies_of(who, patient_id)
        _refuse_while_rekeying(*self.corrections.awaiting_rekey(partition, patient_id))
        begun = self.audit.record(
            audit_events.security_alert(
                acting,
                EventType.SECURITY_CONFIGURATION,
                outcome=EventOutcome.SUCCESS,
                description=f"{what}: begins ({len(studies)} indexed study(ies))",
                front_door=front_door,
                objects=[audit_events.patient_object(patient_id)],
            )
        )
        queue = None
        if partition == self.index.replicated_partition:
            queue = _replication(partition, patient_id, studies)

        def outcome(result: EventOutcome, description: str) -> bool:
            try:
                self.audit.record(
                    audit_events.study_deleted(
                        acting,
                        patient_id=patient_id,
                        study_uids=studies,
                        outcome=result,
                        front_door=front_door,
                        description=description,
                    )
                )
            except NubisError:
                return False
            return True

        try:
            count = self.keys.shred_patient(partition, patient_id, also=queue)
        except Exception as exc:
            outcome(EventOutcome.MAJOR_FAILURE, f"{what}: {exc}")
            raise KeyringFailed(f"the keyring failed: {exc}") from exc
        if count == 0:
            recorded = outcome(
                EventOutcome.MINOR_FAILURE,
                f"{what}: no key of that patient (nothing stored, or shredded already)",
            )
        else:
            recorded = outcome(
                EventOutcome.SUCCESS,
                f"{what}: {count} patient key(s) erased; their objects are unreadable, "
                f"{len(studies)} study(ies) still indexed",
            )
        return Shredded(count, studies, begun.seq, recorded)

    def _studies_of(self, who: Principal, patient_id: str) -> list[str]:
        """The Study Instance UIDs the index holds for exactly this Patient ID."""
        query = parse_qido(
            Level.STUDY,
            [("PatientID", patient_id), ("includefield", "00100020")],
            max_limit=self.max_studies,
        )
        scoped = self.query.scoped(who, query, text=f"PatientID={patient_id}")
        # Matching is QIDO's (a * or ? in an ID is a wildcard there); keep exact IDs only.
        return [
            str(_value(item, "0020000D"))
            for item in self.query.matches(scoped)
            if _value(item, "00100020") == patient_id
        ]


def _value(item: dict[str, Any], tag: str) -> object:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _refuse_while_rekeying(waiting: list[str], jobs: list[int]) -> None:
    if not waiting:
        return
    # Keys follow the Patient ID objects arrived with until the re-key is done.
    then = (
        f"wait for job {jobs[0]} ({len(jobs)} rekey job(s) queued or running: "
        "nubis jobs list), then shred again"
        if jobs
        else "its last rekey job left objects it could not re-encrypt (nubis jobs "
        "list; objects awaiting a restore, or unreadable): nubis jobs run rekey, "
        "then shred again"
    )
    raise Conflict(
        f"{len(waiting)} study(ies) were moved between this patient and another by a "
        "correction and are still being re-keyed: some of their objects are under "
        "the other patient's key, so a shred now would erase a study no longer this "
        f"patient's or miss one that now is. {then[0].upper()}{then[1:]}"
    )


def _replication(
    partition: str, patient_id: str, studies: list[str]
) -> Callable[[Connection], None]:
    """The outbox entries of the shred, written in the keyring's index commit."""
    detail = json.dumps({"patient": patient_id}, ensure_ascii=False)

    def queue(conn: Connection) -> None:
        cursor = driver_cursor(conn)
        now = time.time_ns() // 1_000_000
        for study_uid in studies or [NO_STUDY]:
            outbox_sql.add(
                cursor, outbox_sql.SHRED, partition, study_uid, None, None, now=now, detail=detail
            )

    return queue
