"""The index side of corrections (nubis.services.corrections): read a study's corrected state,
write a correction or its undo, list the history. Functions of a write transaction's
connection, so a correction, its audit records and its history row commit together.

A study's *state* is what a correction changes and an undo restores: its patient and study
columns, its ``attrs`` JSON (both what QIDO-RS and C-FIND match and answer) and its overlay row
(what metadata and retrieved objects show). The stored objects and their metadata JSON are
never written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from nubis.index.driver import driver_cursor, is_postgresql
from nubis.index.schema import corrections, studies, study_overlays
from nubis.index.store_sql import lock_study

__all__ = [
    "STATE_COLUMNS",
    "CorrectionRow",
    "StudyState",
    "correction",
    "history",
    "insert_correction",
    "set_state",
    "studies_of_patient",
    "study_state",
]

# The study columns a correction may change (index/columns.study_columns).
STATE_COLUMNS = (
    "patient_id",
    "patient_name",
    "patient_name_folded",
    "patient_birth_date",
    "patient_sex",
    "study_date",
    "study_time",
    "accession_number",
    "referring_physician_name",
    "referring_physician_name_folded",
    "study_description",
    "study_id",
    "timezone_offset",
)


@dataclass(frozen=True)
class StudyState:
    """One study as a correction finds or leaves it."""

    study_uid: str
    columns: dict[str, Any]
    attrs: str
    # The overlay JSON; None: the study has no overlay row yet.
    overlay: str | None
    version: int
    # The Patient ID the stored objects carry (for late instances of a moved study).
    stored_patient_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> StudyState:
        return StudyState(**data)


@dataclass(frozen=True)
class CorrectionRow:
    id: int
    partition: str
    kind: str
    reason: str
    created_by: str
    created_at: int
    undoes: int | None
    undone_by: int | None
    study_uids: list[str]
    # study UID -> {"before": StudyState dict, "after": StudyState dict}
    changes: dict[str, dict[str, dict[str, Any]]]


def study_state(conn: Connection, partition: str, study_uid: str) -> tuple[int, StudyState] | None:
    """(study pk, state) of a study, its row locked until commit (PostgreSQL); None if absent."""
    found = lock_study(driver_cursor(conn), partition, study_uid, lock_rows=is_postgresql(conn))
    if found is None:
        return None
    pk = int(found[0])
    row = conn.execute(
        sa.select(
            *(studies.c[c] for c in STATE_COLUMNS),
            studies.c.attrs,
            study_overlays.c.attrs,
            study_overlays.c.version,
            study_overlays.c.stored_patient_id,
        )
        .select_from(studies.outerjoin(study_overlays, study_overlays.c.study_pk == studies.c.id))
        .where(studies.c.id == pk)
    ).one()
    n = len(STATE_COLUMNS)
    columns = dict(zip(STATE_COLUMNS, row[:n], strict=True))
    return pk, StudyState(
        study_uid,
        columns,
        row[n],
        row[n + 1],
        row[n + 2] or 0,
        row[n + 3] if row[n + 1] is not None else columns["patient_id"],
    )


def studies_of_patient(conn: Connection, partition: str, patient_id: str) -> list[str]:
    """Study UIDs of a patient (as the index keeps it now: corrected), oldest first."""
    return list(
        conn.execute(
            sa.select(studies.c.study_uid)
            .where(studies.c.partition == partition, studies.c.patient_id == patient_id)
            .order_by(studies.c.id)
        ).scalars()
    )


def set_state(
    conn: Connection, pk: int, state: StudyState, *, correction_id: int, now: int
) -> None:
    """Write ``state`` to the study's row and overlay row."""
    conn.execute(
        sa.update(studies)
        .where(studies.c.id == pk)
        .values(**state.columns, attrs=state.attrs, updated_at=now)
    )
    values = {
        "attrs": state.overlay or "{}",
        "version": state.version,
        "stored_patient_id": state.stored_patient_id,
        "correction_id": correction_id,
    }
    updated = conn.execute(
        sa.update(study_overlays).where(study_overlays.c.study_pk == pk).values(**values)
    )
    if not updated.rowcount:
        conn.execute(sa.insert(study_overlays).values(study_pk=pk, **values))


def latest_correction_of(conn: Connection, pk: int) -> int | None:
    """The correction that last changed the study (its overlay row's)."""
    return conn.execute(
        sa.select(study_overlays.c.correction_id).where(study_overlays.c.study_pk == pk)
    ).scalar()


def insert_correction(
    conn: Connection,
    *,
    partition: str,
    kind: str,
    reason: str,
    created_by: str,
    now: int,
    undoes: int | None,
    changes: dict[str, dict[str, StudyState]],
) -> int:
    """The history row of a correction (or undo); its id."""
    encoded = {
        uid: {side: state.to_dict() for side, state in sides.items()}
        for uid, sides in changes.items()
    }
    return int(
        conn.execute(
            sa.insert(corrections)
            .values(
                partition=partition,
                kind=kind,
                reason=reason,
                created_by=created_by,
                created_at=now,
                undoes=undoes,
                study_uids="\\".join(changes),
                changes=json.dumps(encoded, separators=(",", ":"), ensure_ascii=False),
            )
            .returning(corrections.c.id)
        ).scalar_one()
    )


def mark_undone(conn: Connection, correction_id: int, undo_id: int) -> None:
    conn.execute(
        sa.update(corrections).where(corrections.c.id == correction_id).values(undone_by=undo_id)
    )


def correction(conn: Connection, partition: str, correction_id: int) -> CorrectionRow | None:
    row = conn.execute(
        sa.select(corrections).where(
            corrections.c.partition == partition, corrections.c.id == correction_id
        )
    ).first()
    return None if row is None else _row(row)


def history(
    conn: Connection, partition: str, *, study_uid: str | None, limit: int
) -> list[CorrectionRow]:
    """Corrections of the partition (of one study), newest first."""
    stmt = sa.select(corrections).where(corrections.c.partition == partition)
    if study_uid is not None:
        # study_uids is backslash-joined: match the whole UID (UIDs hold no backslash).
        stmt = stmt.where(
            sa.literal("\\")
            .concat(corrections.c.study_uids)
            .concat("\\")
            .contains(f"\\{study_uid}\\", autoescape=True)
        )
    rows = conn.execute(stmt.order_by(corrections.c.id.desc()).limit(limit)).all()
    return [_row(r) for r in rows]


def _row(row: Any) -> CorrectionRow:
    return CorrectionRow(
        id=row.id,
        partition=row.partition,
        kind=row.kind,
        reason=row.reason,
        created_by=row.created_by,
        created_at=row.created_at,
        undoes=row.undoes,
        undone_by=row.undone_by,
        study_uids=row.study_uids.split("\\") if row.study_uids else [],
        changes=json.loads(row.changes),
    )
