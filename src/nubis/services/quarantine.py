"""Studies held in quarantine: their instances disagree on the patient, or one of their
series UIDs is another study's (issue 12).

A study holds one patient and a series belongs to one study (docs/security.md, "One study,
one patient"). An old archive may hold studies that do not (a merge done at the source, a typo
fixed halfway, a series UID reused); with the setting ``patient_conflict = quarantine`` (or
``StoreService.store(..., patient_conflict="quarantine")``, what a migration uses) such an
object is stored rather than refused, under its own study, and that study is held in
quarantine: a ``quarantined_studies`` row, which every scoped read leaves out for all but the
tenant's admins (``Scope.sees_quarantine``), so nobody granted either patient sees the other's
data. Nothing of it is lost; the instances that conflicted carry the warning whose reason is
the study's reason code, ``patient-conflict`` or ``series-conflict`` (``nubis storage
warnings``).

The interface, for the admin CLI, the HTTP API (nubis.web.quarantine_routes), the migration
report and the corrections service (nubis.services.corrections):

- :meth:`QuarantineService.held` lists the tenant's quarantined studies and why;
- :meth:`QuarantineService.patients_of` gives the Patient IDs a study's instances name, as
  stored, for a correction to decide what to change (recorded as a read of each patient);
- :meth:`QuarantineService.release` lets a study out once its instances agree on one patient
  (the study row takes that patient's attributes if it named another and no correction
  governs it: grants follow the row) and no other study of the tenant holds one of its series
  UIDs (one copy removed). After ``CorrectionService.move_study`` the Patient ID its objects
  were stored with counts as agreeing, since every object is then served as the corrected
  patient; ``resolved=True`` releases without the checks (a correction that makes them agree
  otherwise, or an admin's finding that a reused series UID names two series, each of its
  own study). Needs a reason; audited (Instances Accessed, Update).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from nubis.errors import BadRequest, NotFound, NubisError
from nubis.index.columns import json_text, study_columns
from nubis.index.database import Index
from nubis.index.schema import instances, quarantined_studies, series, studies, study_overlays
from nubis.model.audit import EventAction
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard

__all__ = ["QuarantineService", "QuarantinedStudy", "StudyStillDisagrees"]


class StudyStillDisagrees(NubisError):
    """A release asked for while the study's instances still name other patients, or another
    study still holds one of its series UIDs (409)."""

    http_status = 409
    dimse_status = 0xA900


@dataclass(frozen=True)
class QuarantinedStudy:
    partition: str
    study_uid: str
    # Reason codes of what it is held for: the warnings its instances carry
    # ("patient-conflict", "series-conflict"; nubis.index.store_sql).
    reasons: tuple[str, ...]
    since: int  # milliseconds since the epoch
    instances: int


class QuarantineService:
    def __init__(self, index: Index, *, guard: Guard) -> None:
        self.index = index
        self.guard = guard

    def held(self, who: Principal) -> list[QuarantinedStudy]:
        """The quarantined studies of ``who``'s tenant, oldest first (admins only)."""
        decision = self.guard.authorize(who, Action.ADMIN, "list quarantined studies")
        assert decision.scope is not None
        stmt = (
            select(
                studies.c.partition,
                studies.c.study_uid,
                quarantined_studies.c.reason,
                quarantined_studies.c.since,
                studies.c.num_instances,
            )
            .select_from(quarantined_studies.join(studies))
            .where(studies.c.partition == decision.scope.partition)
            .order_by(quarantined_studies.c.since, studies.c.id)
        )
        with self.index.reading() as conn:
            return [
                QuarantinedStudy(partition, uid, tuple(reason.split()), since, count)
                for partition, uid, reason, since, count in conn.execute(stmt)
            ]

    def patients_of(self, who: Principal, study_uid: str) -> dict[str, int]:
        """Instances per Patient ID (as stored, 64 characters) of a quarantined study of
        ``who``'s tenant; NotFound when it is not held. Recorded as a read of each patient's
        record (PS3.15 A.5.3.9, EventActionCode R) before it is answered."""
        decision = self.guard.authorize(
            who, Action.ADMIN, f"read the patients of quarantined study {study_uid}"
        )
        assert decision.scope is not None
        with self.index.reading() as conn:
            study_pk, _ = _held(conn, decision.scope.partition, study_uid)
            patients = _patients(conn, study_pk)
        self.guard.record(
            *(
                audit_events.patient_record(
                    who,
                    patient_id=patient,
                    study_uids=[study_uid],
                    action=EventAction.READ,
                    request_id=who.request_id,
                    description="patients of a quarantined study listed",
                )
                for patient in patients
            )
        )
        return patients

    def release(
        self, who: Principal, study_uid: str, *, reason: str, resolved: bool = False
    ) -> QuarantinedStudy:
        """Let ``study_uid`` out of quarantine: visible again to whoever its scope allows.

        Refused (StudyStillDisagrees, 409) while its instances name another Patient ID than
        its study row or another study of the tenant holds one of its series UIDs, unless
        ``resolved`` says a correction made them agree as served (or the admin found a
        reused series UID to name two series). ``reason`` (required: BadRequest) goes into
        the audit record (Instances Accessed, Update).
        """
        decision = self.guard.authorize(
            who, Action.ADMIN, f"release quarantined study {study_uid}", study_uids=(study_uid,)
        )
        assert decision.scope is not None
        partition = decision.scope.partition
        reason = " ".join((reason or "").split())
        if not reason:
            raise BadRequest("a release from quarantine needs a reason")

        def job(conn: Connection) -> QuarantinedStudy:
            study_pk, row = _held(conn, partition, study_uid, lock=True)
            patients = _patients(conn, study_pk)
            stored_patient = row.patient_id or ""
            # A correction that moved the study keeps the row on the corrected patient; its
            # objects carry the Patient ID they were stored with, which agrees as served.
            agreeing = {stored_patient}
            if row.overlay is not None:  # corrected: the row is the correction's, kept
                if row.moved_from is not None:
                    agreeing.add(row.moved_from)
            elif len(patients) == 1 and stored_patient not in patients:
                # The instances agree on another patient than the study row, which came from
                # an instance since removed: grants and patient queries must follow them.
                columns = study_columns(_one_metadata(conn, study_pk))
                conn.execute(
                    update(studies)
                    .where(studies.c.id == study_pk)
                    .values({k: v for k, v in columns.items() if k.startswith("patient_")})
                )
                stored_patient = next(iter(patients))
                agreeing = {stored_patient}
            if not resolved and set(patients) - agreeing:
                raise StudyStillDisagrees(
                    f"study {study_uid} still holds {len(patients)} Patient IDs (0010,0020): "
                    "correct its instances first, or release it as resolved once a correction "
                    "makes them agree"
                )
            if not resolved and (shared := _series_shared(conn, partition, study_pk)):
                raise StudyStillDisagrees(
                    f"study {study_uid} holds {shared} series whose Series Instance UID "
                    "(0020,000E) another study holds: remove one copy first, or release it as "
                    "resolved once each series is known to belong to its own study"
                )
            conn.execute(
                delete(quarantined_studies).where(quarantined_studies.c.study_pk == study_pk)
            )
            event = audit_events.instances_accessed(
                who,
                patient_id=stored_patient,
                study_uids=[study_uid],
                action=EventAction.UPDATE,
                request_id=who.request_id,
                description=(
                    f"released from quarantine{' as resolved' if resolved else ''}: {reason[:200]}"
                ),
            )
            record = self.guard.record_job(event)
            if record is not None:
                record(conn)
            reasons = tuple(row.reason.split())
            return QuarantinedStudy(partition, study_uid, reasons, row.since, row.num_instances)

        return self.index.write(job)


def _held(
    conn: Connection, partition: str, study_uid: str, *, lock: bool = False
) -> tuple[int, Any]:
    """The held study's pk and row; ``lock``: its study row locked until commit (PostgreSQL),
    as a store into it locks it, so a conflict stored meanwhile is not released unseen."""
    stmt = (
        select(
            studies.c.id,
            studies.c.patient_id,
            studies.c.num_instances,
            quarantined_studies.c.reason,
            quarantined_studies.c.since,
            study_overlays.c.study_pk.label("overlay"),
            study_overlays.c.stored_patient_id.label("moved_from"),
        )
        .select_from(
            quarantined_studies.join(studies).outerjoin(
                study_overlays, study_overlays.c.study_pk == studies.c.id
            )
        )
        .where(studies.c.partition == partition, studies.c.study_uid == study_uid)
    )
    row = conn.execute(stmt.with_for_update(of=studies) if lock else stmt).first()
    if row is None:
        raise NotFound(f"study {study_uid} is not held in quarantine")
    return int(row.id), row


def _series_shared(conn: Connection, partition: str, study_pk: int) -> int:
    """How many of the study's series have a Series Instance UID another study of the
    partition holds."""
    other = series.alias("other_series")
    elsewhere = (
        select(other.c.id)
        .select_from(other.join(studies, studies.c.id == other.c.study_pk))
        .where(
            other.c.series_uid == series.c.series_uid,
            other.c.study_pk != study_pk,
            studies.c.partition == partition,
        )
        .exists()
    )
    stmt = select(func.count()).select_from(series).where(series.c.study_pk == study_pk, elsewhere)
    return int(conn.execute(stmt).scalar_one())


def _one_metadata(conn: Connection, study_pk: int) -> dict[str, Any]:
    text = conn.execute(
        select(instances.c.metadata_json)
        .select_from(instances.join(series))
        .where(series.c.study_pk == study_pk)
        .limit(1)
    ).scalar_one()
    metadata: dict[str, Any] = json.loads(text)
    return metadata


def _patients(conn: Connection, study_pk: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    stmt = (
        select(instances.c.metadata_json)
        .select_from(instances.join(series))
        .where(series.c.study_pk == study_pk)
    )
    for (text,) in conn.execute(stmt):
        patient = json_text(json.loads(text), "PatientID", studies.c.patient_id) or ""
        counts[patient] = counts.get(patient, 0) + 1
    return counts
