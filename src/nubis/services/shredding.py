"""Crypto-shredding a patient: every stored object of theirs unreadable, for good.

One path for every front door (``nubis keys shred-patient``, ``POST /keys/shred-patient`` for
an admin or the replication service of a primary): authorize (ADMIN and DELETE: keys and data
at once), refuse while a correction's re-key of the patient's studies is under way, record the
attempt (Security Alert), shred, record the outcome (DICOM Study Deleted, PS3.15 A.5.3.5). If
the first record cannot be written nothing is shredded. The index rows stay (searchable,
answering 410). A legal hold on the patient, a study of theirs or the tenant refuses it
(nubis.services.legal_holds); a shred that erased keys is certified
(nubis.retention.certificates): the objects it made unreadable, named by the outcome's record.

With a replica (nubis.replication), the shred goes into the replication outbox in the commit
that records the erased keys in the index, one entry per indexed study of the patient (one
under no study when none is indexed), so the erasure reaches the replica in each study's order
whatever crashes after; the change feed's entries (one per indexed study) go in that commit too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from nubis.errors import Conflict, NotFound, NubisError, StorageUnavailable
from nubis.index import feed_sql, outbox_sql
from nubis.index.database import Index
from nubis.index.driver import driver_cursor
from nubis.model.audit import ActiveParticipant, EventOutcome, EventType
from nubis.model.query import Level, parse_qido
from nubis.model.records import StoredInstance
from nubis.ports.audit import AuditReceipt, AuditRecorder
from nubis.ports.keys import KeyProvider
from nubis.retention import certificates
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.corrections import CorrectionService
from nubis.services.guard import Guard
from nubis.services.legal_holds import LegalHolds
from nubis.services.maintenance import Certifying
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
    certificate_id: int | None = None  # the erasure certificate, when keys were erased


class ShredService:
    """``query`` finds the patient's studies (for the records and the outbox), ``corrections``
    says which are still being re-keyed; ``max_studies``: the query's limit; ``holds`` refuse
    a shred, ``certify`` signs its certificate (None: none issued)."""

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
        holds: LegalHolds | None = None,
        certify: Certifying | None = None,
    ) -> None:
        self.holds = holds
        self.certify = certify
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
        if self.holds is not None:  # a shred would erase a held study's objects, backups too
            self.holds.refuse_shred(acting, partition, patient_id)
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
        replication = None
        if partition == self.index.replicated_partition:
            replication = _replication(partition, patient_id, studies)
        changes = [
            feed_sql.Change(feed_sql.SHRED, feed_sql.SHREDDED, partition, uid) for uid in studies
        ]

        def also(conn: Connection) -> None:
            """In the commit recording the keys as erased: the outbox entries, then the change
            feed's (its entry must be the transaction's last statement, nubis.index.feed_sql)."""
            if replication is not None:
                replication(conn)
            self.index.note_changes(conn, *changes)

        def outcome(result: EventOutcome, description: str) -> AuditReceipt | None:
            try:
                return self.audit.record(
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
                return None

        try:
            count = self.keys.shred_patient(partition, patient_id, also=also)
        except Exception as exc:
            outcome(EventOutcome.MAJOR_FAILURE, f"{what}: {exc}")
            raise KeyringFailed(f"the keyring failed: {exc}") from exc
        if count == 0:
            recorded = outcome(
                EventOutcome.MINOR_FAILURE,
                f"{what}: no key of that patient (nothing stored, or shredded already)",
            )
            return Shredded(count, studies, begun.seq, recorded is not None)
        made = self._certificate(partition, studies, count, acting)
        done = (
            f"{what}: {count} patient key(s) erased; their objects are unreadable, "
            f"{len(studies)} study(ies) still indexed"
        )
        if made is not None:
            done += f"; {certificates.certificate_digest_phrase(made.digest)}"
        recorded = outcome(EventOutcome.SUCCESS, done)
        certificate_id = None
        if made is not None and recorded is not None:
            certificate_id = certificates.save(
                self.index,
                made,
                audit_seq=recorded.seq,
                study_uid=studies[0] if studies else "",
                patient_id=patient_id,
            )
        return Shredded(count, studies, begun.seq, recorded is not None, certificate_id)

    def _certificate(
        self, partition: str, studies: list[str], count: int, acting: ActiveParticipant
    ) -> certificates.Draft | None:
        """The signed certificate of a shred: every indexed object it made unreadable (UIDs
        and the digests the index recorded) and the number of keys erased."""
        if self.certify is None:
            return None
        erased: list[StoredInstance] = []
        for uid in studies:
            try:
                erased += self.index.instances_of(partition, uid, hide_quarantined=False)
            except NotFound:  # deleted since it was listed
                continue
        return certificates.draft(
            partition=partition,
            target={"patient_keys": str(count), "studies": ",".join(studies)},
            erased=erased,
            cause={"kind": "crypto-shred", "actor": acting.user_id},
            blob_store=self.certify.blob_store,
            copies={
                **self.certify.copies,
                "keys": "the patient's keys were erased from the keyring, so these objects "
                "are unreadable here and in every backup; the index lists the key ids, and a "
                "keyring copy older than the shred is shredded again on every open",
            },
            key=self.certify.key(),
            blobs="kept, unreadable without the erased keys; the index rows stay until the "
            "studies are deleted",
        )

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
