"""Store an object: validate, write its blob durably, then commit its index row.

The order is what makes an acknowledgement safe: the blob is fsynced and renamed into place
before the index row is committed, and only a committed row makes an object visible. A crash
between the two leaves a blob without a row, which the reaper removes; never a row without a
blob. Used by STOW-RS and, in #3, C-STORE.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import tag_for_keyword

from nubis.dicom.inspect import InspectedInstance, inspect_file
from nubis.dicom.levels import series_level, study_level
from nubis.errors import InvalidInstance, NubisError, StorageUnavailable
from nubis.index.database import Index
from nubis.index.schema import series, studies
from nubis.model.audit import AuditEvent, EventOutcome
from nubis.model.query import fold_person_name
from nubis.model.records import NewInstance, StoreResult
from nubis.ports.blobs import BlobContext, BlobStore
from nubis.security import audit_events
from nubis.security.policy import Action, Decision, Principal
from nubis.services.disk_floor import DiskFloor
from nubis.services.guard import Guard
from nubis.services.spool import SpooledFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreOutcome:
    """One object's result: ``error`` is None on success."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    result: StoreResult | None = None
    error: NubisError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class StoreService:
    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        *,
        guard: Guard,
        overwrite: bool,
        bulk_threshold: int,
        floor: DiskFloor | None = None,
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.guard = guard
        self.overwrite = overwrite
        self.bulk_threshold = bulk_threshold
        self.floor = floor

    def check_room(self) -> None:
        """InsufficientStorage (507 / 0xA700) while the disk is below its free-space floor."""
        if self.floor is not None:
            self.floor.check()

    def authorize(self, who: Principal) -> Decision:
        """Whether ``who`` may store (in its own tenant); Forbidden (403 / 0x0124) otherwise.

        Front doors call this once before receiving a request's objects, so a caller who may
        not store is refused before sending megabytes; :meth:`store` decides again anyway.
        """
        return self.guard.authorize(who, Action.WRITE, "store")

    def store(
        self,
        spooled: SpooledFile,
        *,
        principal: Principal,
        expected_study_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
    ) -> StoreOutcome:
        """Store one spooled PS3.10 file into ``principal``'s tenant; the spool file is
        consumed whatever happens.

        ``expected_study_uid`` is the study of a STOW-RS request URL (PS3.18 10.5.1),
        ``expected_sop_class_uid`` the abstract syntax of a C-STORE's presentation context
        (PS3.4 B.2.3); an object of another study or SOP class is refused with 0xA900.

        Failures are returned, not raised, so one bad object never fails its neighbours in a
        STOW-RS request or a C-STORE association (PS3.18 10.5.3, PS3.4 B.2.3); a caller who
        may not store gets Forbidden (0x0124) for each object. Every stored object is recorded
        (DICOM Instances Transferred, action Create) in the same index transaction as its row:
        an object is stored and acknowledged only if its record committed with it.
        """
        inspected: InspectedInstance | None = None
        try:
            decision = self.authorize(principal)
            assert decision.scope is not None
            partition = decision.scope.partition
            # Again here: a large object may have taken the last room while it was spooled.
            self.check_room()
            inspected = inspect_file(spooled.open(), bulk_threshold=self.bulk_threshold)
            if (
                expected_study_uid is not None
                and inspected.study_instance_uid != expected_study_uid
            ):
                raise InvalidInstance(
                    f"Study Instance UID {inspected.study_instance_uid} does not match the "
                    f"study {expected_study_uid} of the request URL",
                    dimse_status=0xA900,
                )
            if (
                expected_sop_class_uid is not None
                and inspected.sop_class_uid != expected_sop_class_uid
            ):
                raise InvalidInstance(
                    f"SOP Class UID {inspected.sop_class_uid} of the data set is not the SOP "
                    f"Class {expected_sop_class_uid} of its presentation context",
                    dimse_status=0xA900,
                )
            record = self.guard.record_job(self._event(principal, inspected, EventOutcome.SUCCESS))
            result = self._commit(spooled, inspected, partition, record)
        except NubisError as exc:
            spooled.discard()
            if inspected is not None:
                self._record_failure(principal, inspected, exc)
            return _outcome(inspected, error=exc)
        except Exception:
            spooled.discard()
            log.exception("store failed")
            return _outcome(inspected, error=StorageUnavailable("the object could not be stored"))
        return _outcome(inspected, result=result)

    @staticmethod
    def _event(
        who: Principal,
        inspected: InspectedInstance,
        outcome: EventOutcome,
        description: str | None = None,
    ) -> AuditEvent:
        return audit_events.instances_transferred(
            who,
            patient_id=_json_text(inspected.metadata, "PatientID"),
            study_uids=[inspected.study_instance_uid],
            outcome=outcome,
            stored=True,
            request_id=who.request_id,
            description=description,
        )

    def _record_failure(
        self, who: Principal, inspected: InspectedInstance, exc: NubisError
    ) -> None:
        try:
            self.guard.record(self._event(who, inspected, EventOutcome.MINOR_FAILURE, exc.reason))
        except NubisError:
            log.error("a refused store could not be recorded in the audit trail")

    def _commit(
        self,
        spooled: SpooledFile,
        inspected: InspectedInstance,
        partition: str,
        record: Callable[[Any], object] | None,
    ) -> StoreResult:
        key = self.blobs.new_key()
        context = BlobContext(
            partition,
            inspected.study_instance_uid,
            inspected.series_instance_uid,
            inspected.sop_instance_uid,
            spooled.sha256,
            patient_id=_json_text(inspected.metadata, "PatientID") or "",
        )
        try:
            self.blobs.put_file(key, spooled, context=context)
        except OSError as exc:
            raise StorageUnavailable(
                f"the blob store could not take the object: {exc.strerror}"
            ) from None
        try:
            result, unneeded_key = self.index.store(
                _new_instance(inspected, spooled, key, partition),
                overwrite=self.overwrite,
                also=record,
            )
        except BaseException:
            # Not acknowledged: remove the blob now rather than leave it to the reaper.
            self.blobs.delete(key)
            raise
        if unneeded_key is not None:
            self.blobs.delete(unneeded_key)
        return result


def _outcome(
    inspected: InspectedInstance | None,
    *,
    result: StoreResult | None = None,
    error: NubisError | None = None,
) -> StoreOutcome:
    if inspected is None:
        return StoreOutcome(None, None, None, None, result, error)
    return StoreOutcome(
        inspected.sop_class_uid,
        inspected.sop_instance_uid,
        inspected.study_instance_uid,
        inspected.series_instance_uid,
        result,
        error,
    )


def _json_text(metadata: dict[str, Any], keyword: str, column: Any = None) -> str | None:
    """A value as DICOM text, from the JSON metadata (already decoded once by inspect)."""
    element = metadata.get(_TAG_HEX[keyword])
    values = element.get("Value") if element else None
    if not values:
        return None
    parts = [
        _person_name(v) if isinstance(v, dict) else ("" if v is None else str(v)) for v in values
    ]
    text = "\\".join(parts)
    length = getattr(getattr(column, "type", None), "length", None)
    # The full value stays in the JSON metadata; a column holds at most its declared length.
    return text[:length] if length else text


def _person_name(value: dict[str, str]) -> str:
    groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def _folded(text: str | None) -> str | None:
    return fold_person_name(text) if text is not None else None


def _json_int(metadata: dict[str, Any], keyword: str) -> int | None:
    text = _json_text(metadata, keyword)
    try:
        return int(float(text.split("\\")[0])) if text else None
    except ValueError:
        return None


def _request_ids(metadata: dict[str, Any]) -> list[tuple[str | None, str | None]]:
    element = metadata.get(_TAG_HEX["RequestAttributesSequence"])
    return [
        (_json_text(item, "ScheduledProcedureStepID"), _json_text(item, "RequestedProcedureID"))
        for item in (element.get("Value") or [] if element else [])
    ]


_TAG_HEX = {
    keyword: f"{tag_for_keyword(keyword):08X}"
    for keyword in (
        "PatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyDescription",
        "StudyID",
        "TimezoneOffsetFromUTC",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "RequestAttributesSequence",
        "ScheduledProcedureStepID",
        "RequestedProcedureID",
    )
}


def _new_instance(
    inspected: InspectedInstance, spooled: SpooledFile, key: str, partition: str
) -> NewInstance:
    metadata = inspected.metadata
    s, se = studies.c, series.c
    patient_name = _json_text(metadata, "PatientName", s.patient_name)
    referring = _json_text(metadata, "ReferringPhysicianName", s.referring_physician_name)
    study_attrs = {t: v for t, v in metadata.items() if study_level(int(t, 16))}
    series_attrs = {t: v for t, v in metadata.items() if series_level(int(t, 16))}
    requests = _request_ids(metadata)
    return NewInstance(
        partition=partition,
        study_uid=inspected.study_instance_uid,
        series_uid=inspected.series_instance_uid,
        sop_instance_uid=inspected.sop_instance_uid,
        sop_class_uid=inspected.sop_class_uid,
        transfer_syntax_uid=inspected.transfer_syntax_uid,
        blob_key=key,
        size=spooled.size,
        sha256=spooled.sha256,
        study_columns={
            "patient_id": _json_text(metadata, "PatientID", s.patient_id),
            "patient_name": patient_name,
            "patient_name_folded": _folded(patient_name),
            "patient_birth_date": _json_text(metadata, "PatientBirthDate", s.patient_birth_date),
            "patient_sex": _json_text(metadata, "PatientSex", s.patient_sex),
            "study_date": _json_text(metadata, "StudyDate", s.study_date),
            "study_time": _json_text(metadata, "StudyTime", s.study_time),
            "accession_number": _json_text(metadata, "AccessionNumber", s.accession_number),
            "referring_physician_name": referring,
            "referring_physician_name_folded": _folded(referring),
            "study_description": _json_text(metadata, "StudyDescription", s.study_description),
            "study_id": _json_text(metadata, "StudyID", s.study_id),
            "timezone_offset": _json_text(metadata, "TimezoneOffsetFromUTC", s.timezone_offset),
        },
        series_columns={
            "modality": _json_text(metadata, "Modality", se.modality),
            "series_number": _json_int(metadata, "SeriesNumber"),
            "series_description": _json_text(metadata, "SeriesDescription", se.series_description),
            "performed_date": _json_text(
                metadata, "PerformedProcedureStepStartDate", se.performed_date
            ),
            "performed_time": _json_text(
                metadata, "PerformedProcedureStepStartTime", se.performed_time
            ),
            "timezone_offset": _json_text(metadata, "TimezoneOffsetFromUTC", se.timezone_offset),
        },
        instance_columns={
            "instance_number": _json_int(metadata, "InstanceNumber"),
            "rows": _json_int(metadata, "Rows"),
            "columns": _json_int(metadata, "Columns"),
            "bits_allocated": _json_int(metadata, "BitsAllocated"),
            "number_of_frames": _json_int(metadata, "NumberOfFrames"),
        },
        requests=requests,
        study_attrs_json=_compact(study_attrs),
        series_attrs_json=_compact(series_attrs),
        metadata_json=inspected.metadata_json,
        frame_index_json=(
            None if inspected.frame_index is None else _compact(inspected.frame_index)
        ),
        bulk_index_json=_compact(inspected.bulk_index) if inspected.bulk_index else None,
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
