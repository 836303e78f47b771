"""The store path's SQL, run on the raw DB-API cursor of the index writer.

Every store runs five to eight statements in the single writer thread. Through SQLAlchemy each
costs about as much Python as the rest of a store's bookkeeping together; on the driver's own
cursor it costs a few microseconds. Statements are plain SQL with named parameters, built once
per column set and cached; the schema they touch is index/schema.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from nubis.errors import InvalidInstance
from nubis.index.driver import DriverCursor
from nubis.index.rekey_sql import mark as mark_for_rekey
from nubis.model.records import IngestWarning, NewInstance

_STUDY_SQL = (
    "SELECT id, modalities, patient_id FROM studies WHERE partition = :p AND study_uid = :uid"
)
_SERIES_IN_PARTITION_SQL = (
    "SELECT 1 FROM series JOIN studies ON studies.id = series.study_pk "
    "WHERE series.series_uid = :uid AND studies.partition = :p"
)
# PostgreSQL advisory lock class (the two-key form, a key space of its own) under which a new
# series UID is checked and inserted, so two studies cannot both take it at once.
_SERIES_LOCK_CLASS = 0x6E75
# PS3.4 B.2.3 / PS3.18 Table 10.5.3-1: the data set does not fit what is stored (409 / 0xA900).
_MISMATCH = 0xA900
# The warnings of an object stored, with quarantine on, where it would otherwise be refused:
# 0xB007 (PS3.4 B.2.3, data set does not match). Their reasons are the codes its study is held
# in quarantine for (quarantined_studies.reason). Neither names the other study or a Patient
# ID: the sender may see neither.
PATIENT_CONFLICT = IngestWarning(
    "patient-conflict",
    0xB007,
    "the study holds another Patient ID (0010,0020): stored, and the study held in quarantine "
    "(admins only) until a correction releases it",
)
SERIES_CONFLICT = IngestWarning(
    "series-conflict",
    0xB007,
    "the series belongs to another study (0020,000E): stored under its own study, which is held "
    "in quarantine (admins only) until released",
)


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...], unless: str) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    conflict = f" ON CONFLICT ({unless}) DO NOTHING" if unless else ""
    return f"INSERT INTO {table} ({names}) VALUES ({values}){conflict} RETURNING id"


def _insert(cursor: DriverCursor, table: str, row: dict[str, Any], unless: str = "") -> int | None:
    """Insert ``row``; its id, or None when ``unless`` names a unique key that is taken."""
    found = cursor.execute(_insert_sql(table, tuple(row), unless), row).fetchone()
    return None if found is None else int(found[0])


def lock_study(cursor: DriverCursor, partition: str, study_uid: str, *, lock_rows: bool) -> Any:
    """The study's (id, modalities, patient_id) row, locked until commit when ``lock_rows``;
    None if absent."""
    sql = _STUDY_SQL + " FOR UPDATE" if lock_rows else _STUDY_SQL
    return cursor.execute(sql, {"p": partition, "uid": study_uid}).fetchone()


def insert_instance(
    cursor: DriverCursor, new: NewInstance, now: int, *, lock_rows: bool
) -> tuple[IngestWarning, ...]:
    """Insert the instance and its study and series rows when new; keep the counts current.

    A study belongs to one patient and a series to one study (docs/security.md, "One study,
    one patient"): InvalidInstance (409 / 0xA900) when the object names another Patient ID
    than its stored study, or a series UID that another study of the partition holds. With
    ``new.quarantine_conflicts`` it is stored instead, under its own study, and that study is
    held in quarantine; the conflicts it was held for are returned (PATIENT_CONFLICT,
    SERIES_CONFLICT; recorded as the instance's warnings), empty when there were none. Raises
    the driver's IntegrityError when the SOP Instance UID is already stored in the partition
    (the caller decides between duplicate, conflict and overwrite). ``lock_rows``: the
    database runs writers concurrently (PostgreSQL), so lock the study row first.
    """
    study = lock_study(cursor, new.partition, new.study_uid, lock_rows=lock_rows)
    study_pk: int | None = None
    if study is None:
        study_pk = _insert(
            cursor,
            "studies",
            {
                "partition": new.partition,
                "study_uid": new.study_uid,
                "attrs": new.study_attrs_json,
                "created_at": now,
                "updated_at": now,
                "modalities": "",
                "num_series": 0,
                "num_instances": 0,
                **new.study_columns,
            },
            unless="partition, study_uid" if lock_rows else "",
        )
        if study_pk is None:  # another node created it since: wait for and lock its row
            study = lock_study(cursor, new.partition, new.study_uid, lock_rows=lock_rows)
        modalities = ""
    conflicts: list[IngestWarning] = []
    if study is not None:
        study_pk, modalities, stored_patient = study
        if _patient_differs(cursor, study_pk, new, stored_patient, now):
            conflicts.append(PATIENT_CONFLICT)
    cursor.execute(
        "SELECT id FROM series WHERE study_pk = :s AND series_uid = :uid",
        {"s": study_pk, "uid": new.series_uid},
    )
    found = cursor.fetchone()
    new_series = found is None
    series_pk: int | None
    if new_series:
        if _series_elsewhere(cursor, new, lock_rows=lock_rows):
            conflicts.append(SERIES_CONFLICT)
        series_pk = _insert(
            cursor,
            "series",
            {
                "study_pk": study_pk,
                "series_uid": new.series_uid,
                "attrs": new.series_attrs_json,
                "created_at": now,
                "num_instances": 0,
                **new.series_columns,
            },
        )
        if new.requests:
            cursor.executemany(
                "INSERT INTO series_requests (series_pk, scheduled_procedure_step_id, "
                "requested_procedure_id) VALUES (?, ?, ?)",
                [(series_pk, step, proc) for step, proc in new.requests],
            )
    else:
        series_pk = found[0]
    instance_pk = _insert(
        cursor,
        "instances",
        {
            "series_pk": series_pk,
            "partition": new.partition,
            "sop_instance_uid": new.sop_instance_uid,
            "sop_class_uid": new.sop_class_uid,
            "transfer_syntax_uid": new.transfer_syntax_uid,
            "blob_key": new.blob_key,
            "size": new.size,
            "sha256": new.sha256,
            "metadata_json": new.metadata_json,
            "frame_index": new.frame_index_json,
            "bulk_index": new.bulk_index_json,
            "created_at": now,
            **new.instance_columns,
        },
    )
    if conflicts:
        _hold(cursor, study_pk, conflicts, now)
    if new.warnings or conflicts:
        insert_warnings(cursor, instance_pk, (*new.warnings, *conflicts), now)
    cursor.execute(
        "UPDATE series SET num_instances = num_instances + 1 WHERE id = :pk", {"pk": series_pk}
    )
    if new_series:
        modality = new.series_columns.get("modality")
        known = set(filter(None, modalities.split("\\")))
        cursor.execute(
            "UPDATE studies SET num_instances = num_instances + 1, num_series = num_series + 1, "
            "modalities = :m, updated_at = :now WHERE id = :pk",
            {
                "pk": study_pk,
                "now": now,
                "m": "\\".join(sorted(known | {modality} if modality else known)),
            },
        )
    else:
        cursor.execute(
            "UPDATE studies SET num_instances = num_instances + 1, updated_at = :now "
            "WHERE id = :pk",
            {"pk": study_pk, "now": now},
        )
    return tuple(conflicts)


def insert_warnings(
    cursor: DriverCursor, instance_pk: int | None, warnings: Iterable[IngestWarning], now: int
) -> None:
    """Record what was odd about an instance, one row per reason (a reason seen again keeps
    its first row: the instance is the same)."""
    cursor.executemany(
        "INSERT INTO instance_warnings (instance_pk, reason, status, detail, at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (instance_pk, reason) DO NOTHING",
        [(instance_pk, w.reason, w.status, w.detail[:256], now) for w in warnings],
    )


def _patient_differs(
    cursor: DriverCursor, study_pk: int, new: NewInstance, stored_patient: str | None, now: int
) -> bool:
    """Whether ``new`` names another patient than its stored study, to be held in quarantine
    for it; InvalidInstance when it does and quarantine is off."""
    # The reasons start with what is wrong: a C-STORE Error Comment keeps 64 characters.
    # Compared as the index keeps them (the column, at most 64 characters, as grants and
    # patient-level queries see them); a missing and an empty Patient ID are the same.
    # Neither value goes into the reason: the sender may not be allowed to see either.
    patient = new.study_columns.get("patient_id") or ""
    if (stored_patient or "") == patient:
        return False
    if _moved_from(cursor, study_pk, patient):
        if new.rekey_moved:
            # Encrypted under the key of the patient the study was moved away from.
            mark_for_rekey(cursor, study_pk, [patient], now)
        return False
    if new.quarantine_conflicts:
        return True
    raise InvalidInstance(
        "the study belongs to another patient (0010,0020): study "
        f"{new.study_uid} is stored with another Patient ID, and a study has one patient",
        dimse_status=_MISMATCH,
    )


def _moved_from(cursor: DriverCursor, study_pk: int, patient_id: str) -> bool:
    """Whether a correction moved the study away from ``patient_id``, the Patient ID its stored
    objects carry (nubis.services.corrections): a late object of it still belongs to it, and
    is served corrected. Asked only when the Patient IDs differ, never on the common path."""
    found = cursor.execute(
        "SELECT stored_patient_id FROM study_overlays WHERE study_pk = :s", {"s": study_pk}
    ).fetchone()
    return found is not None and (found[0] or "") == patient_id


def _series_elsewhere(cursor: DriverCursor, new: NewInstance, *, lock_rows: bool) -> bool:
    """Whether another study of the partition holds ``new``'s series UID, to be held in
    quarantine for it; InvalidInstance when one does and quarantine is off."""
    if lock_rows:
        cursor.execute(
            f"SELECT pg_advisory_xact_lock({_SERIES_LOCK_CLASS}, hashtext(:key))",
            {"key": f"{new.partition}/{new.series_uid}"},
        )
    if not cursor.execute(
        _SERIES_IN_PARTITION_SQL, {"uid": new.series_uid, "p": new.partition}
    ).fetchone():
        return False
    if new.quarantine_conflicts:
        return True
    # Which study holds it is not said: the sender may not be allowed to know that study.
    raise InvalidInstance(
        f"the series belongs to another study: series {new.series_uid} is stored in a "
        f"study other than {new.study_uid}",
        dimse_status=_MISMATCH,
    )


def _hold(
    cursor: DriverCursor, study_pk: int | None, conflicts: list[IngestWarning], now: int
) -> None:
    """Hold the study in quarantine for ``conflicts``: its reason lists their codes, separated
    by spaces; a study held already keeps its date and gains the codes it lacked. Runs under
    the study's row lock (or on a study this transaction created), so nobody races it."""
    found = cursor.execute(
        "SELECT reason FROM quarantined_studies WHERE study_pk = :pk", {"pk": study_pk}
    ).fetchone()
    codes = [c.reason for c in conflicts]
    if found is None:
        cursor.execute(
            "INSERT INTO quarantined_studies (study_pk, reason, since) VALUES (:pk, :r, :now)",
            {"pk": study_pk, "r": " ".join(codes), "now": now},
        )
        return
    held_for = found[0].split()
    if lacking := [c for c in codes if c not in held_for]:
        cursor.execute(
            "UPDATE quarantined_studies SET reason = :r WHERE study_pk = :pk",
            {"pk": study_pk, "r": " ".join([*held_for, *lacking])},
        )
