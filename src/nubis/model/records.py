"""Records that cross the boundary between services and the index."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class IngestWarning:
    """Something odd about an object that was stored all the same (issue 12: real archives).

    ``reason`` is a stable key the storage report counts by; ``status`` the PS3.4 B.2.3 /
    PS3.18 10.5.3 warning it is answered with (0xB000 coercion of data elements, 0xB006
    elements discarded, 0xB007 data set does not match SOP class); ``detail`` says what, in
    attribute names and UIDs, never in other values (they may identify the patient).
    """

    reason: str
    status: int
    detail: str


@dataclass(frozen=True)
class NewInstance:
    """Everything the index keeps about an object about to be committed."""

    partition: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    # Column values for the studies / series / instances tables, taken from the data set.
    study_columns: dict[str, Any]
    series_columns: dict[str, Any]
    instance_columns: dict[str, Any]
    # (ScheduledProcedureStepID, RequestedProcedureID) per RequestAttributesSequence item.
    requests: list[tuple[str | None, str | None]]
    study_attrs_json: str
    series_attrs_json: str
    metadata_json: str
    frame_index_json: str | None
    bulk_index_json: str | None
    # What was odd about the object; kept in instance_warnings when there is anything.
    warnings: tuple[IngestWarning, ...] = ()
    # A Patient ID other than its stored study's, or a Series Instance UID another study of
    # the partition holds: store the object and hold its study in quarantine rather than
    # refuse it (setting patient_conflict = quarantine, issue 12).
    quarantine_conflicts: bool = False
    # Objects are encrypted under their own Patient ID's key: a late object of a study a
    # correction moved to another patient queues the study's re-key (nubis.index.rekey_sql).
    rekey_moved: bool = False


class StoreResult(enum.Enum):
    STORED = "stored"
    ALREADY_STORED = "already stored"  # identical bytes re-sent: success, nothing written
    REPLACED = "replaced"  # on_conflict = overwrite
    # The stored instance sent again in another encoding (transfer syntax, file meta, group
    # lengths): success with a warning, nothing written (nubis.dicom.equivalence).
    SAME_INSTANCE = "already stored in another encoding"
    # Stored, its study held in quarantine: its instances disagree on the patient, or one of
    # its series UIDs is another study's.
    QUARANTINED = "stored in quarantine"


@dataclass(frozen=True)
class Stored:
    """What ``Index.store`` did: the outcome, the blob key no longer needed (a re-sent or
    replaced object's), and the conflicts its study was held in quarantine for."""

    result: StoreResult
    unneeded_key: str | None = None
    held_for: tuple[IngestWarning, ...] = ()


@dataclass(frozen=True)
class StoredInstance:
    """An instance as the index knows it: where its bytes are and how to cut them."""

    pk: int
    partition: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    blob_key: str
    size: int
    sha256: str
    number_of_frames: int | None
    frame_index_json: str | None = field(repr=False)
    bulk_index_json: str | None = field(repr=False)
    # For audit records (PS3.15 A.5.2.3: the patient participant object); never for access.
    patient_id: str | None = None
    # The transfer syntax the object arrived in, when a tier's lossless compression has
    # re-encoded it since (nubis.tiers.compression); None (or the same syntax) otherwise.
    original_transfer_syntax_uid: str | None = None
    # DICOM JSON of the patient and study attributes a correction replaced, applied to what
    # is served (nubis.dicom.overlay); None when the study was never corrected.
    overlay_json: str | None = None

    @property
    def received_transfer_syntax_uid(self) -> str:
        """The transfer syntax the object arrived in: what peers are offered (C-MOVE, C-GET)."""
        return self.original_transfer_syntax_uid or self.transfer_syntax_uid

    @cached_property
    def frames(self) -> list[list[tuple[int, int]]] | None:
        if self.frame_index_json is None:
            return None
        return [[(int(o), int(n)) for o, n in frags] for frags in json.loads(self.frame_index_json)]

    @cached_property
    def bulk(self) -> dict[str, tuple[int, int]]:
        if not self.bulk_index_json:
            return {}
        return {k: (int(v[0]), int(v[1])) for k, v in json.loads(self.bulk_index_json).items()}
