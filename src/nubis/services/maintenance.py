"""Delete (PS3.18 10.4 DELETE) and the reaper that removes unreferenced blobs.

A delete commits the removal of index rows and queues their blob keys in ``doomed_blobs`` in
the same transaction; the reaper deletes the blobs afterwards. A crash in between leaves a
queued key, never a row pointing at a missing blob. The reaper also removes orphans: blobs
written by a store that died before its index row committed, once older than a grace period
(a store in flight has its blob on disk before its row).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nubis.errors import Conflict, NotFound
from nubis.index.database import Index
from nubis.model.audit import EventOutcome
from nubis.model.records import StoredInstance
from nubis.ports.audit import AuditReceipt
from nubis.ports.blobs import BlobStore
from nubis.retention import certificates
from nubis.security import audit_events
from nubis.security.audit import SigningKey
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Erasure:
    """What an erasure removed, and its certificate (None without a signing key or trail)."""

    count: int
    bytes: int
    certificate_id: int | None


@dataclass(frozen=True)
class Certifying:
    """How erasures are certified: the signing key (loaded on first use) and what a
    certificate says of the blob store and of the other copies (replica, backups)."""

    key: Callable[[], SigningKey]
    blob_store: str
    copies: dict[str, str]


def _target(study_uid: str, series_uid: str | None, sop: str | None) -> dict[str, str]:
    target = {"study_uid": study_uid}
    if series_uid is not None:
        target["series_uid"] = series_uid
    if sop is not None:
        target["sop_instance_uid"] = sop
    return target


@dataclass(frozen=True)
class ReapReport:
    doomed_deleted: int
    orphans_deleted: int


class Maintenance:
    def __init__(
        self,
        index: Index,
        blobs: BlobStore,
        *,
        guard: Guard,
        orphan_grace_seconds: int,
        certify: Certifying | None = None,
    ) -> None:
        self.index = index
        self.certify = certify
        self.blobs = blobs
        self.guard = guard
        self.orphan_grace_seconds = orphan_grace_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def delete(
        self,
        who: Principal,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> int:
        """:meth:`erase` for DELETE (PS3.18 10.4): the number of instances removed."""
        return self.erase(who, study_uid, series_uid, sop_instance_uid).count

    def erase(
        self,
        who: Principal,
        study_uid: str,
        series_uid: str | None = None,
        sop_instance_uid: str | None = None,
        *,
        cause: dict[str, Any] | None = None,
    ) -> Erasure:
        """Delete a study, series or instance of ``who``'s tenant; NotFound if nothing matches,
        OnLegalHold (409) while a legal hold covers the study.

        Forbidden (403 / 0x0124) unless a role of ``who`` may delete; recorded as DICOM Study
        Deleted (PS3.15 A.5.3.5), also when nothing was found or a hold refused it. With a
        signing key, what was removed is certified (nubis.retention.certificates): the
        record names the certificate's digest; ``cause`` is what the certificate gives as
        the reason (the retention job's rule and approver; the actor of a DELETE otherwise).
        """
        target = sop_instance_uid or series_uid or study_uid
        decision = self.guard.authorize(
            who, Action.DELETE, f"delete {target}", study_uids=(study_uid,)
        )
        assert decision.scope is not None
        partition = decision.scope.partition
        outcome, description = EventOutcome.MAJOR_FAILURE, "the index failed"
        made: certificates.Draft | None = None
        erased: list[StoredInstance] = []
        receipts: list[AuditReceipt] = []
        try:
            erased = self.index.erase(
                partition,
                study_uid,
                series_uid,
                sop_instance_uid,
                hide_quarantined=not decision.scope.sees_quarantine,
            )
        except (NotFound, Conflict) as exc:
            outcome, description = EventOutcome.MINOR_FAILURE, exc.reason
            raise
        else:
            outcome, description = EventOutcome.SUCCESS, f"{len(erased)} instance(s) of {target}"
            if self.certify is not None:
                made = certificates.draft(
                    partition=partition,
                    target=_target(study_uid, series_uid, sop_instance_uid),
                    erased=erased,
                    cause=cause or {"kind": "delete", "actor": who.id, "via": who.via},
                    blob_store=self.certify.blob_store,
                    copies=self.certify.copies,
                    key=self.certify.key(),
                )
                description += f"; {certificates.certificate_digest_phrase(made.digest)}"
        finally:
            receipts = self.guard.record(
                audit_events.study_deleted(
                    who,
                    study_uids=[study_uid],
                    outcome=outcome,
                    request_id=who.request_id,
                    description=description,
                )
            )
        certificate_id = None
        if made is not None and receipts:
            certificate_id = certificates.save(
                self.index,
                made,
                audit_seq=receipts[0].seq,
                study_uid=study_uid,
                patient_id=erased[0].patient_id,
            )
        self.reap_doomed()
        return Erasure(len(erased), sum(row.size for row in erased), certificate_id)

    def reap_doomed(self) -> int:
        deleted = 0
        while keys := self.index.doomed_blob_keys():
            for key in keys:
                self.blobs.delete(key)
            self.index.forget_doomed(keys)
            deleted += len(keys)
        return deleted

    def reap_orphans(
        self, grace_seconds: int | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Delete blobs without an index row older than the grace period; ``progress`` is
        called with the number of blobs listed so far (the ``reap`` job shows it)."""
        grace = self.orphan_grace_seconds if grace_seconds is None else grace_seconds
        cutoff = time.time() - grace
        deleted = 0
        batch: list[str] = []

        def flush() -> int:
            referenced = self.index.referenced_blob_keys(batch)
            orphans = [k for k in batch if k not in referenced]
            for key in orphans:
                log.warning("reaping orphan blob %s (no index row)", key)
                self.blobs.delete(key)
            batch.clear()
            return len(orphans)

        for listed, info in enumerate(self.blobs.list(), start=1):
            if progress is not None and listed % 500 == 0:
                progress(listed)
            if info.modified_at <= cutoff:
                batch.append(info.key)
                if len(batch) >= 500:
                    deleted += flush()
        if batch:
            deleted += flush()
        return deleted

    def reap(self, grace_seconds: int | None = None) -> ReapReport:
        return ReapReport(self.reap_doomed(), self.reap_orphans(grace_seconds))

    def start_background(self, interval_seconds: float = 600) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.reap()
                except Exception:
                    log.exception("reaper pass failed; retrying at the next interval")

        self._thread = threading.Thread(target=loop, name="nubis-reaper", daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
