"""Legal holds in the index (table ``legal_holds``): which hold covers a study or a patient.

Read inside the transaction of the deletion it guards (``Index.erase``), so a hold placed an
instant before a delete commits is seen by it. A hold covers a study when it names the study,
the study's patient, or the whole tenant (neither named).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from nubis.index.schema import legal_holds, studies

__all__ = ["Hold", "covering_patient", "covering_study", "hold_from_row"]


@dataclass(frozen=True)
class Hold:
    id: int
    partition: str
    patient_id: str | None
    study_uid: str | None
    reason: str
    placed_by: str
    placed_at: int
    released_by: str | None
    released_at: int | None
    release_reason: str | None

    @property
    def level(self) -> str:
        if self.study_uid is not None:
            return "study"
        return "patient" if self.patient_id is not None else "tenant"

    @property
    def active(self) -> bool:
        return self.released_at is None

    def to_dict(self) -> dict[str, object]:
        """As the CLI's --json and the admin API answer it."""
        return {
            "id": self.id,
            "level": self.level,
            "study_uid": self.study_uid,
            "patient_id": self.patient_id,
            "reason": self.reason,
            "placed_by": self.placed_by,
            "placed_at": self.placed_at,
            "released_by": self.released_by,
            "released_at": self.released_at,
            "release_reason": self.release_reason,
        }


def hold_from_row(row: Any) -> Hold:
    return Hold(
        row.id,
        row.partition,
        row.patient_id,
        row.study_uid,
        row.reason,
        row.placed_by,
        row.placed_at,
        row.released_by,
        row.released_at,
        row.release_reason,
    )


def covering_study(conn: Connection, partition: str, study_uid: str) -> Hold | None:
    """The oldest active hold covering the study (by its UID, its patient or its tenant)."""
    patient = select(studies.c.patient_id).where(
        studies.c.partition == partition, studies.c.study_uid == study_uid
    )
    row = conn.execute(
        select(legal_holds)
        .where(
            legal_holds.c.partition == partition,
            legal_holds.c.released_at.is_(None),
            or_(
                legal_holds.c.study_uid == study_uid,
                and_(
                    legal_holds.c.study_uid.is_(None),
                    legal_holds.c.patient_id.in_(patient),
                ),
                and_(legal_holds.c.study_uid.is_(None), legal_holds.c.patient_id.is_(None)),
            ),
        )
        .order_by(legal_holds.c.id)
        .limit(1)
    ).first()
    return None if row is None else hold_from_row(row)


def covering_patient(conn: Connection, partition: str, patient_id: str) -> Hold | None:
    """The oldest active hold covering the patient or any study of theirs (a shred of the
    patient's key would erase that study too)."""
    their_studies = select(studies.c.study_uid).where(
        studies.c.partition == partition, studies.c.patient_id == patient_id
    )
    row = conn.execute(
        select(legal_holds)
        .where(
            legal_holds.c.partition == partition,
            legal_holds.c.released_at.is_(None),
            or_(
                legal_holds.c.patient_id == patient_id,
                legal_holds.c.study_uid.in_(their_studies),
                and_(legal_holds.c.study_uid.is_(None), legal_holds.c.patient_id.is_(None)),
            ),
        )
        .order_by(legal_holds.c.id)
        .limit(1)
    ).first()
    return None if row is None else hold_from_row(row)
