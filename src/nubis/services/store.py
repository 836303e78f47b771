"""Store an object: validate, write its blob durably, then commit its index row.

The order is what makes an acknowledgement safe: the blob is fsynced and renamed into place
before the index row is committed, and only a committed row makes an object visible. A crash
between the two leaves a blob without a row, which the reaper removes; never a row without a
blob. Used by STOW-RS and, in #3, C-STORE.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from nubis import metrics
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.dicom.consistency import MetaGroupLengthWrong
from nubis.dicom.equivalence import same_instance
from nubis.dicom.file_meta import with_file_meta_rewritten
from nubis.dicom.inspect import InspectedInstance, inspect_file
from nubis.errors import (
    DuplicateInstance,
    InvalidInstance,
    NotFound,
    NubisError,
    StorageUnavailable,
)
from nubis.index.columns import json_text, new_instance
from nubis.index.database import Index
from nubis.model.audit import FRONT_DOORS, AuditEvent, EventOutcome
from nubis.model.records import IngestWarning, NewInstance, StoreResult
from nubis.ports.blobs import BlobContext, BlobStore
from nubis.security import audit_events
from nubis.security.policy import Action, Decision, Principal
from nubis.services.disk_floor import DiskFloor
from nubis.services.guard import Guard
from nubis.services.spool import SpooledFile, SpoolWriter

log = logging.getLogger(__name__)

# PS3.4 Table B.2-1 Warning: Coercion of Data Elements. The re-sent copy of a stored instance
# is answered by the stored one, whose encoding (transfer syntax, file meta, group lengths) is
# not the one sent: what the sender will get back differs from what it sent in encoding only.
_COERCED = 0xB000


@dataclass(frozen=True)
class StoreOutcome:
    """One object's result: ``error`` is None on success."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_uid: str | None
    series_uid: str | None
    result: StoreResult | None = None
    error: NubisError | None = None
    # What was odd about a stored object (PS3.18 10.5.3 Warning Reason, PS3.4 B.2.3 warning
    # statuses); empty for a clean one and for a refused one.
    warnings: tuple[IngestWarning, ...] = ()
    # For the caller's own audit record of the transfer (PS3.15 A.5.2.3: the patient
    # participant, as Holdings gives it); never shown.
    patient_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Holdings:
    """What the archive holds of one study, as :meth:`StoreService.holdings` tells a writer."""

    digests: dict[str, str]  # SHA-256 by SOP Instance UID
    # For the caller's audit records (PS3.15 A.5.2.3: the patient participant); never shown.
    patient_id: str | None = None


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
        patient_conflict: str = "refuse",
    ) -> None:
        self.index = index
        self.blobs = blobs
        self.guard = guard
        self.overwrite = overwrite
        self.bulk_threshold = bulk_threshold
        self.floor = floor
        self.patient_conflict = patient_conflict
        # Keys follow the Patient ID an object arrives with (nubis.services.study_rekey).
        self.rekeys = isinstance(blobs, EncryptedBlobStore)

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
        patient_conflict: str | None = None,
    ) -> StoreOutcome:
        """Store one spooled PS3.10 file into ``principal``'s tenant; the spool file is
        consumed whatever happens.

        ``expected_study_uid`` is the study of a STOW-RS request URL (PS3.18 10.5.1),
        ``expected_sop_class_uid`` the abstract syntax of a C-STORE's presentation context
        (PS3.4 B.2.3); an object of another study or SOP class is refused with 0xA900.
        ``patient_conflict`` ("refuse" or "quarantine", the setting's value when None) says
        what becomes of an object naming another Patient ID than its stored study, or a
        Series Instance UID another study holds: refused (0xA900), or stored under its own
        study, held in quarantine (warning 0xB007; a migration, docs/security.md "One study,
        one patient").

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
            try:
                inspected = inspect_file(spooled.open(), bulk_threshold=self.bulk_threshold)
            except MetaGroupLengthWrong as wrong:
                spooled = _file_meta_rewritten(spooled, wrong.data_set_start)
                inspected = inspect_file(spooled.open(), bulk_threshold=self.bulk_threshold)
                coerced = IngestWarning(
                    "group-length-rewritten",
                    _COERCED,
                    f"{wrong.reason}: the file meta is kept rewritten with its true length, "
                    "the data set as sent",
                )
                inspected = replace(inspected, warnings=(*inspected.warnings, coerced))
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
            quarantine = (patient_conflict or self.patient_conflict) == "quarantine"
            result, warnings = self._commit(spooled, inspected, partition, record, quarantine)
        except NubisError as exc:
            spooled.discard()
            if inspected is not None:
                self._record_failure(principal, inspected, exc)
            _count(principal, "failed" if exc.http_status >= 500 else "refused")
            return _outcome(inspected, error=exc)
        except Exception:
            spooled.discard()
            log.exception("store failed")
            _count(principal, "failed")
            return _outcome(inspected, error=StorageUnavailable("the object could not be stored"))
        _count(principal, _RESULT_LABELS[result], spooled.size)
        return _outcome(inspected, result=result, warnings=warnings)

    @staticmethod
    def _event(
        who: Principal,
        inspected: InspectedInstance,
        outcome: EventOutcome,
        description: str | None = None,
    ) -> AuditEvent:
        return audit_events.instances_transferred(
            who,
            patient_id=json_text(inspected.metadata, "PatientID"),
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
        quarantine: bool = False,
    ) -> tuple[StoreResult, tuple[IngestWarning, ...]]:
        key = self.blobs.new_key()
        context = BlobContext(
            partition,
            inspected.study_instance_uid,
            inspected.series_instance_uid,
            inspected.sop_instance_uid,
            spooled.sha256,
            patient_id=json_text(inspected.metadata, "PatientID") or "",
        )
        try:
            self.blobs.put_file(key, spooled, context=context)
        except OSError as exc:
            raise StorageUnavailable(
                f"the blob store could not take the object: {exc.strerror}"
            ) from None
        new = new_instance(
            inspected, blob_key=key, size=spooled.size, sha256=spooled.sha256, partition=partition
        )
        if quarantine or self.rekeys:
            new = replace(new, quarantine_conflicts=quarantine, rekey_moved=self.rekeys)
        try:
            try:
                stored = self.index.store(new, overwrite=False, also=record)
            except DuplicateInstance:
                # Another object under a stored UID: the same instance in another encoding is
                # answered as stored; a truly different one follows on_conflict.
                same = self._same_as_stored(key, context, new, record)
                if same is not None:
                    self.blobs.delete(key)
                    return StoreResult.SAME_INSTANCE, (*inspected.warnings, same)
                if not self.overwrite:
                    raise
                stored = self.index.store(new, overwrite=True, also=record)
        except BaseException:
            # Not acknowledged: remove the blob now rather than leave it to the reaper.
            self.blobs.delete(key)
            raise
        if stored.unneeded_key is not None:
            self.blobs.delete(stored.unneeded_key)
        return stored.result, (*inspected.warnings, *stored.held_for)

    def holdings(self, who: Principal, study_uid: str) -> Holdings:
        """The SOP Instance UIDs and SHA-256s the archive holds of a study in ``who``'s tenant,
        for a writer deciding what it need not send again (a migration resuming); empty when
        it holds none.

        Authorized as WRITE, not READ: it says no more than storing says anyway (a re-sent
        object is answered as already stored, or refused as a conflict, whoever may see its
        study), so it counts a study held in quarantine too, which only admins may read
        (docs/security.md). Nothing of the objects but their UIDs and digests is returned.
        Recorded as DICOM Instances Accessed (PS3.15 A.5.3.3), as a read of them would be.
        """
        what = f"presence of study {study_uid}'s instances"
        decision = self.guard.authorize(who, Action.WRITE, what, study_uids=(study_uid,))
        assert decision.scope is not None
        try:
            found = self.index.instances_of(
                decision.scope.partition, study_uid, hide_quarantined=False
            )
        except NotFound:
            found = []
        patient_id = found[0].patient_id if found else None
        self.guard.record(
            audit_events.instances_accessed(
                who,
                patient_id=patient_id,
                study_uids=[study_uid],
                outcome=EventOutcome.SUCCESS if found else EventOutcome.MINOR_FAILURE,
                request_id=who.request_id,
                description=f"{what}: {len(found)}",
            )
        )
        return Holdings({i.sop_instance_uid: i.sha256 for i in found}, patient_id)

    def _same_as_stored(
        self,
        key: str,
        context: BlobContext,
        new: NewInstance,
        record: Callable[[Any], object] | None,
    ) -> IngestWarning | None:
        """The warning for blob ``key`` being the stored instance re-sent in another encoding
        (recorded on the stored instance, with the store's audit record); None when its data
        set differs from the stored one's (nubis.dicom.equivalence)."""
        stored = self.index.find_instance(new.partition, new.sop_instance_uid)
        if stored is None:
            return None
        kept_context = BlobContext(
            stored.partition,
            stored.study_uid,
            stored.series_uid,
            stored.sop_instance_uid,
            stored.sha256,
        )
        try:
            with (
                self.blobs.open(stored.blob_key, context=kept_context) as kept,
                self.blobs.open(key, context=context) as received,
            ):
                if not same_instance(kept, received):
                    return None
        except (NubisError, OSError) as exc:
            # The stored object cannot be read (its key erased, its tier archived...): it
            # cannot be shown to be the same, so the conflict stands as before.
            log.info("re-sent instance not compared with the stored one: %s", type(exc).__name__)
            return None
        warning = IngestWarning(
            "same-instance-other-encoding",
            _COERCED,
            f"already stored in another encoding: the same data set is kept in transfer "
            f"syntax {stored.transfer_syntax_uid}; this copy in {new.transfer_syntax_uid} "
            "was not kept",
        )
        self.index.note_warning(stored.pk, warning, also=record)
        return warning


def _file_meta_rewritten(spooled: SpooledFile, data_set_start: int) -> SpooledFile:
    """``spooled`` with its file meta written anew (nubis.dicom.file_meta), as a spool file
    beside it (sealed alike); ``spooled`` is discarded."""
    name = spooled.path.with_name(f"{spooled.path.name}-meta")
    writer = SpoolWriter(name, sealed=spooled.seal is not None)
    try:
        with spooled.open() as source:
            for chunk in with_file_meta_rewritten(source, data_set_start):
                writer.write(chunk)
        rewritten = writer.finish()
    except BaseException:
        writer.abort()
        raise
    spooled.discard()
    return rewritten


# Ingest counters' result label (nubis.metrics): a bounded set, whatever the store said.
_RESULT_LABELS = {
    StoreResult.STORED: "stored",
    StoreResult.REPLACED: "stored",
    StoreResult.QUARANTINED: "stored",
    StoreResult.ALREADY_STORED: "same",
    StoreResult.SAME_INSTANCE: "same",
}


def _count(who: Principal, result: str, size: int = 0) -> None:
    via = who.via if who.via in FRONT_DOORS else "other"  # a label: a fixed set
    metrics.ingest_objects.labels(via, result).inc()
    if result == "stored":
        metrics.ingest_bytes.labels(via).inc(size)


def warning_status(warnings: tuple[IngestWarning, ...]) -> int:
    """The one warning status an object's warnings are answered with (C-STORE Status, STOW-RS
    Warning Reason): coercion first, since it says the object kept is not byte for byte what
    was sent as it will be served (PS3.4 B.2.3)."""
    return min(w.status for w in warnings)


def _outcome(
    inspected: InspectedInstance | None,
    *,
    result: StoreResult | None = None,
    error: NubisError | None = None,
    warnings: tuple[IngestWarning, ...] = (),
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
        warnings,
        json_text(inspected.metadata, "PatientID"),
    )
