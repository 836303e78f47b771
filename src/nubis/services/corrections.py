"""Corrections of patient and study attributes, merges of patients, and their undo.

A correction never rewrites a stored object (docs/corrections.md says why). In one index
transaction it (1) writes the corrected values into the study's columns and ``attrs``, which
QIDO-RS, C-FIND and the scope of grants read, (2) keeps the changed attributes as the study's
overlay (``study_overlays``), applied where metadata and whole objects are served
(nubis.dicom.overlay, through ``RetrieveService`` and the instance-level query), (3) appends
a history row holding each study's state before and after, and (4) commits its audit records:
Patient Record (PS3.15 A.5.3.9, EventActionCode U) for every patient whose record changed, and
DICOM Instances Accessed with U (A.5.3.3) for every study. An undo is a correction too: it
restores the states recorded before, and is refused while a later correction of one of the
studies builds on the one undone. A correction that files a study under another patient
also queues, in the same transaction, the re-key of its objects under that patient's key
(with encryption at rest: nubis.services.study_rekey), which a crypto-shred waits for. With a
replica, each study's change goes into the replication outbox in that transaction too, as the
attributes it sets (nubis.replication: the replica re-applies it as an update of the study).

The public interface (used by the CLI, the HTTP API and by the migration's quarantine):

- :meth:`CorrectionService.update_study` / :meth:`~CorrectionService.update_patient`: set
  attributes (keyword or tag -> DICOM text, None to empty) on one study or on every study of a
  patient;
- :meth:`~CorrectionService.move_study`: file a study under another patient, taking that
  patient's attributes from its newest study;
- :meth:`~CorrectionService.merge_patients`: every study of one patient moved to another;
- :meth:`~CorrectionService.undo` and :meth:`~CorrectionService.history`.

Every call needs the ADMIN action (admin role) and acts in the caller's tenant only; a reason
is required and recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pydicom.datadict import keyword_for_tag
from sqlalchemy import Connection

from nubis.dicom import overlay
from nubis.errors import BadRequest, Conflict, NotFound
from nubis.index import corrections_sql as sql
from nubis.index import edge_sql, feed_sql, outbox_sql, rekey_sql
from nubis.index.columns import json_text, study_columns
from nubis.index.database import Index
from nubis.index.driver import driver_cursor
from nubis.model.audit import AuditEvent, EventAction
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard

__all__ = ["PATIENT_ATTRIBUTES", "Correction", "CorrectionService"]

# What "the patient" is when a study moves to another one: the Patient module's text
# attributes, taken from the target patient's newest study (emptied when it has none of them).
PATIENT_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientNames",
    "EthnicGroup",
)
MAX_REASON = 1024
MAX_STUDIES = 10_000

Changes = dict[str, dict[str, Any]]  # tag hex -> DICOM JSON element


@dataclass(frozen=True)
class Correction:
    """A correction (or undo) as its history row keeps it."""

    id: int
    kind: str  # update, move, merge, undo
    reason: str
    created_by: str
    created_at: int
    undoes: int | None
    undone_by: int | None
    study_uids: list[str]
    # study UID -> attribute keyword -> {"before": text, "after": text}
    changed: dict[str, dict[str, dict[str, str | None]]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "undoes": self.undoes,
            "undone_by": self.undone_by,
            "studies": self.study_uids,
            "changed": self.changed,
        }


class CorrectionService:
    """``rekeys``: the archive encrypts objects under their patient's key, so a correction that
    files a study under another patient queues its re-key (nubis.services.study_rekey), and
    ``wake`` (this process's job runner's) is called once it is committed."""

    def __init__(
        self,
        index: Index,
        guard: Guard,
        *,
        rekeys: bool = False,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.index = index
        self.guard = guard
        self.rekeys = rekeys
        self.wake = wake

    # ------------------------------------------------------------------ corrections
    def update_study(
        self, who: Principal, study_uid: str, changes: Mapping[str, str | None], *, reason: str
    ) -> Correction:
        """Set attributes of one study (``{"PatientName": "Doe^Jane", "StudyDescription":
        None}``). NotFound (404) when the tenant has no such study; BadRequest (400) naming
        an attribute that may not be corrected or a value that does not fit its VR."""
        elements = _elements(changes)
        return self._write(
            who,
            "update",
            reason,
            f"correct study {study_uid}",
            None,
            lambda _conn, _partition: {study_uid: elements},
        )

    def update_patient(
        self, who: Principal, patient_id: str, changes: Mapping[str, str | None], *, reason: str
    ) -> Correction:
        """Set attributes on every study of a patient (a misspelt name, a wrong birth date; a
        new PatientID renames the patient). NotFound when the patient has no study."""
        elements = _elements(changes)

        def targets(conn: Connection, partition: str) -> dict[str, Changes]:
            return dict.fromkeys(_patient_studies(conn, partition, patient_id), elements)

        return self._write(who, "update", reason, "correct a patient", patient_id, targets)

    def move_study(
        self,
        who: Principal,
        study_uid: str,
        to_patient_id: str,
        *,
        reason: str,
        changes: Mapping[str, str | None] | None = None,
    ) -> Correction:
        """File a study under patient ``to_patient_id``: its patient attributes become that
        patient's (from the newest study filed under it; only the Patient ID when it has
        none), then ``changes`` on top. Who was granted the old patient no longer sees the
        study; who was granted the new one does (grants follow the study's Patient ID)."""
        extra = _elements(changes, required=False) if changes else {}

        def targets(conn: Connection, partition: str) -> dict[str, Changes]:
            return {study_uid: {**_patient_of(conn, partition, to_patient_id), **extra}}

        return self._write(who, "move", reason, f"move study {study_uid}", to_patient_id, targets)

    def merge_patients(
        self, who: Principal, from_patient_id: str, into_patient_id: str, *, reason: str
    ) -> Correction:
        """Every study of ``from_patient_id`` moved under ``into_patient_id`` (the surviving
        patient), in one correction, undone as one."""
        if from_patient_id == into_patient_id:
            raise BadRequest("a patient cannot be merged into itself")

        def targets(conn: Connection, partition: str) -> dict[str, Changes]:
            uids = _patient_studies(conn, partition, from_patient_id)
            patient = _patient_of(conn, partition, into_patient_id)
            return dict.fromkeys(uids, patient)

        return self._write(who, "merge", reason, "merge patients", into_patient_id, targets)

    def undo(self, who: Principal, correction_id: int, *, reason: str) -> Correction:
        """Restore what correction ``correction_id`` changed, as a new correction (kind
        ``undo``). NotFound when the tenant has no such correction; Conflict (409) when it was
        undone already, is itself an undo, or one of its studies no longer shows what it left
        (a later correction changed it: undo that one first)."""

        def targets(
            conn: Connection, partition: str
        ) -> dict[str, tuple[sql.StudyState, sql.StudyState]]:
            found = sql.correction(conn, partition, correction_id)
            if found is None:
                raise NotFound(f"no correction {correction_id}")
            if found.undone_by is not None:
                raise Conflict(f"correction {correction_id} was undone by {found.undone_by}")
            if found.kind == "undo":
                raise Conflict(
                    f"correction {correction_id} is an undo; make a new correction instead"
                )
            return {
                uid: (
                    sql.StudyState.from_dict(sides["before"]),
                    sql.StudyState.from_dict(sides["after"]),
                )
                for uid, sides in found.changes.items()
            }

        return self._write(
            who,
            "undo",
            reason,
            f"undo correction {correction_id}",
            None,
            targets,
            undoes=correction_id,
        )

    def history(
        self, who: Principal, *, study_uid: str | None = None, limit: int = 100
    ) -> list[Correction]:
        """The tenant's corrections (of one study), newest first; recorded as a read of the
        record of every patient they name."""
        decision = self.guard.authorize(who, Action.ADMIN, "list corrections")
        assert decision.scope is not None
        partition = decision.scope.partition
        with self.index.reading() as conn:
            rows = sql.history(conn, partition, study_uid=study_uid, limit=max(1, min(limit, 1000)))
        # The history shows patients' attributes: a read of each patient's record (PS3.15
        # A.5.3.9, EventActionCode R), recorded before it is answered.
        patients: dict[str, list[str]] = {}
        for row in rows:
            for uid, sides in row.changes.items():
                for side in sides.values():
                    pid = side["columns"].get("patient_id") or ""
                    patients.setdefault(pid, [])
                    if uid not in patients[pid]:
                        patients[pid].append(uid)
        self.guard.record(
            *(
                audit_events.patient_record(
                    who,
                    patient_id=pid,
                    study_uids=uids,
                    action=EventAction.READ,
                    request_id=who.request_id,
                    description="corrections history listed",
                )
                for pid, uids in patients.items()
            )
        )
        return [_correction(r) for r in rows]

    def awaiting_rekey(self, partition: str, patient_id: str) -> tuple[list[str], list[int]]:
        """Studies whose objects may be under the key of ``patient_id`` without being filed
        under it, or the reverse, until their re-key is done; and the ``rekey`` jobs queued or
        running. For the shred's own check (``nubis keys shred-patient``), which has
        authorized: a shred then would erase a study no longer the patient's, or miss one
        that now is."""
        with self.index.reading() as conn:
            studies = rekey_sql.pending(conn, partition, patient_id)
            jobs = [job_id for job_id, _ in rekey_sql.rekey_jobs(conn)] if studies else []
        return studies, jobs

    # ------------------------------------------------------------------ the one write path
    def _write(
        self,
        who: Principal,
        kind: str,
        reason: str,
        what: str,
        patient_id: str | None,
        targets: Callable[[Connection, str], Mapping[str, Any]],
        *,
        undoes: int | None = None,
    ) -> Correction:
        reason = _reason(reason)
        decision = self.guard.authorize(who, Action.ADMIN, what, patient_id=patient_id)
        self.guard.refuse_change(who, what)
        assert decision.scope is not None
        partition = decision.scope.partition
        now = int(time.time() * 1000)

        queued: list[bool] = []

        def job(conn: Connection) -> int:
            queued.clear()  # a retried transaction starts over
            wanted = targets(conn, partition)
            if not wanted:
                raise NotFound("no study to correct: the patient has no study")
            if len(wanted) > MAX_STUDIES:
                raise BadRequest(f"a correction changes at most {MAX_STUDIES} studies")
            changes: dict[str, dict[str, sql.StudyState]] = {}
            pks: dict[str, int] = {}
            for uid, target in wanted.items():
                found = sql.study_state(conn, partition, uid)
                if found is None:
                    if undoes is not None:
                        continue  # deleted since: nothing left to restore
                    raise NotFound(f"no study {uid}")
                pk, before = found
                if edge_sql.has_evicted(conn, pk):
                    # The cloud would serve its objects under the overlay, which the edge
                    # cannot check against their digests, and a re-key needs the blobs.
                    raise Conflict(
                        f"study {uid} is evicted from this edge node: correct it at the cloud "
                        "archive it was forwarded to"
                    )
                if undoes is not None:
                    restored, left = target
                    if not _same(before, left):
                        # Undoing it now would silently drop what changed since.
                        latest = sql.latest_correction_of(conn, pk)
                        raise Conflict(
                            f"study {uid} was changed by correction {latest} after "
                            f"correction {undoes}: undo {latest} first"
                        )
                    after = replace(restored, version=before.version + 1)
                else:
                    after = _corrected(before, target)
                changes[uid] = {"before": before, "after": after}
                pks[uid] = pk
            correction_id = sql.insert_correction(
                conn,
                partition=partition,
                kind=kind,
                reason=reason,
                created_by=who.id,
                now=now,
                undoes=undoes,
                changes=changes,
            )
            for uid, sides in changes.items():
                sql.set_state(conn, pks[uid], sides["after"], correction_id=correction_id, now=now)
                before, after = sides["before"], sides["after"]
                if self.rekeys and _queue_rekey(conn, pks[uid], before, after, now):
                    queued.append(True)
            if undoes is not None:
                sql.mark_undone(conn, undoes, correction_id)
            if partition == self.index.replicated_partition:
                _queue_replication(conn, partition, correction_id, reason, changes, now)
            events = _events(who, kind, correction_id, reason, changes)
            record = self.guard.record_job(*events)
            if record is not None:
                record(conn)
            self.index.note_changes(conn, *_feed_changes(partition, correction_id, changes))
            return correction_id

        correction_id = self.index.write(job)
        if queued and self.wake is not None:
            self.wake()
        with self.index.reading() as conn:
            row = sql.correction(conn, partition, correction_id)
        assert row is not None
        return _correction(row)


# ---------------------------------------------------------------------- helpers
def _feed_changes(
    partition: str, correction_id: int, changes: Mapping[str, object]
) -> list[feed_sql.Change]:
    """The change feed's entries of a correction: one update per study it changed."""
    return [
        feed_sql.Change(
            feed_sql.UPDATE,
            feed_sql.CURRENT,
            partition,
            uid,
            detail=f"correction:{correction_id}",
        )
        for uid in changes
    ]


def _reason(reason: str) -> str:
    text = " ".join((reason or "").split())
    if not text:
        raise BadRequest("a correction needs a reason")
    if len(text) > MAX_REASON or not text.isprintable():
        raise BadRequest(f"the reason must be printable text of at most {MAX_REASON} characters")
    return text


def _elements(changes: Mapping[str, str | None], *, required: bool = True) -> Changes:
    if not changes and required:
        raise BadRequest("a correction needs at least one attribute to set")
    elements: Changes = {}
    for name, value in changes.items():
        key, element = overlay.element(name, value)
        elements[key] = element
    return elements


def _patient_studies(conn: Connection, partition: str, patient_id: str) -> list[str]:
    uids = sql.studies_of_patient(conn, partition, patient_id)
    if not uids:
        raise NotFound("no study is filed under that Patient ID")
    return uids


def _patient_of(conn: Connection, partition: str, patient_id: str) -> Changes:
    """The patient attributes a study filed under ``patient_id`` gets: those of its newest
    study, or only the Patient ID when none is filed under it."""
    key, element = overlay.element("PatientID", patient_id)
    uids = sql.studies_of_patient(conn, partition, patient_id)
    if not uids:
        return {key: element}
    found = sql.study_state(conn, partition, uids[-1])
    assert found is not None
    attrs = json.loads(found[1].attrs)
    patient: Changes = {}
    for name in PATIENT_ATTRIBUTES:
        tag = f"{overlay.tag_of(name):08X}"
        empty = {"vr": overlay.element(name, None)[1]["vr"]}
        patient[tag] = attrs.get(tag) or empty
    patient[key] = element
    return patient


def _queue_replication(
    conn: Connection,
    partition: str,
    correction_id: int,
    reason: str,
    changes: Mapping[str, Mapping[str, sql.StudyState]],
    now: int,
) -> None:
    """One outbox entry per study: the attributes the correction left changed, as text. Any
    kind (a move, a merge, an undo) reaches the replica as this update of the study, which
    is idempotent: applied twice, the study shows the same."""
    cursor = driver_cursor(conn)
    for uid, sides in changes.items():
        diff = _diff(sides["before"].attrs, sides["after"].attrs)
        if not diff:
            continue
        detail = {
            "correction": correction_id,
            "reason": reason,
            "set": {name: values["after"] for name, values in diff.items()},
        }
        outbox_sql.add(
            cursor,
            outbox_sql.CORRECT,
            partition,
            uid,
            None,
            None,
            now=now,
            detail=json.dumps(detail, separators=(",", ":"), ensure_ascii=False),
        )


def _queue_rekey(
    conn: Connection, pk: int, before: sql.StudyState, after: sql.StudyState, now: int
) -> bool:
    """Queue the study's re-key when it changes patient (whether it did): its objects are under
    the key of the Patient ID they arrived with, or of the one a re-key filed them under."""
    old, new = _patient_id(before), _patient_id(after)
    if old == new:
        return False
    others = {old, before.columns.get("patient_id") or "", before.stored_patient_id or ""}
    rekey_sql.mark(driver_cursor(conn), pk, others - {new}, now)
    return True


def _patient_id(state: sql.StudyState) -> str:
    """The study's Patient ID, whole (its column is cut to 64 characters): whose key its
    objects are under once re-keyed."""
    return json_text(json.loads(state.attrs), "PatientID") or ""


def _same(state: sql.StudyState, other: sql.StudyState) -> bool:
    """Whether a study shows what ``other`` recorded (its version aside)."""
    return (state.columns, state.attrs, overlay.parse(state.overlay)) == (
        other.columns,
        other.attrs,
        overlay.parse(other.overlay),
    )


def _corrected(before: sql.StudyState, elements: Changes) -> sql.StudyState:
    attrs = json.loads(before.attrs)
    attrs.update(elements)
    merged = overlay.parse(before.overlay)
    merged.update(elements)
    return sql.StudyState(
        study_uid=before.study_uid,
        columns=study_columns(attrs),
        attrs=_compact(attrs),
        overlay=_compact(merged),
        version=before.version + 1,
        stored_patient_id=before.stored_patient_id,
    )


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(dict(sorted(value.items())), separators=(",", ":"), ensure_ascii=False)


def _events(
    who: Principal,
    kind: str,
    correction_id: int,
    reason: str,
    changes: Mapping[str, Mapping[str, sql.StudyState]],
) -> list[AuditEvent]:
    """Patient Record (U) per patient whose record changed, before or after, naming its
    studies; DICOM Instances Accessed (U) per study (PS3.15 A.5.3.9, A.5.3.3)."""
    description = f"correction {correction_id} ({kind}): {reason}"
    patients: dict[str, list[str]] = {}
    events: list[AuditEvent] = []
    for uid, sides in changes.items():
        old = sides["before"].columns.get("patient_id") or ""
        new = sides["after"].columns.get("patient_id") or ""
        for pid in dict.fromkeys((old, new)):
            patients.setdefault(pid, []).append(uid)
        events.append(
            audit_events.instances_accessed(
                who,
                patient_id=new or None,
                study_uids=[uid],
                action=EventAction.UPDATE,
                request_id=who.request_id,
                description=description,
            )
        )
    for pid, uids in patients.items():
        events.insert(
            0,
            audit_events.patient_record(
                who,
                patient_id=pid,
                study_uids=uids,
                request_id=who.request_id,
                description=description,
            ),
        )
    return events


def _text(element: Mapping[str, Any] | None) -> str | None:
    values = (element or {}).get("Value")
    if not values:
        return None
    parts = []
    for v in values:
        if isinstance(v, dict):
            groups = [v.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            parts.append("=".join(groups))
        else:
            parts.append(str(v))
    return "\\".join(parts)


def _diff(before_attrs: str, after_attrs: str) -> dict[str, dict[str, str | None]]:
    """Attribute keyword (tag hex when it has none) -> its text before and after, for the
    attributes that differ between two studies' ``attrs`` JSON."""
    before, after = json.loads(before_attrs), json.loads(after_attrs)
    diff: dict[str, dict[str, str | None]] = {}
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            name = keyword_for_tag(int(key, 16)) or key
            diff[name] = {"before": _text(before.get(key)), "after": _text(after.get(key))}
    return diff


def _correction(row: sql.CorrectionRow) -> Correction:
    changed = {
        uid: _diff(sides["before"]["attrs"], sides["after"]["attrs"])
        for uid, sides in row.changes.items()
    }
    return Correction(
        id=row.id,
        kind=row.kind,
        reason=row.reason,
        created_by=row.created_by,
        created_at=row.created_at,
        undoes=row.undoes,
        undone_by=row.undone_by,
        study_uids=row.study_uids,
        changed=changed,
    )
