"""Storage Commitment Push Model reports (PS3.4 J.3.3): a durable job each, until delivered.

What PS3.4 Annex J asks of the SCP, and how nubis does it:

- J.3.2.1.3: an N-ACTION success status "conveys that the SCP has successfully received the
  request"; a failure status that it "is not processing the request". So the request is a
  ``commitment-report`` job in the index before the N-ACTION is answered: a node that dies
  after answering cannot lose it. An index that cannot take it is answered 0x0110.
- J.3.2.1.2: "At any time after receipt of the N-ACTION-Response, the SCU may release the
  association". J.3.3.1.2: the SCP "shall be capable of issuing the N-EVENT-REPORT on a
  different association than the one on which the N-ACTION operation was performed"; it may
  try the same one first (Note 1), which may fail as the SCU may have released it. The first
  attempt runs at once, in the process that answered, on the N-ACTION's association while it
  is open; every other attempt, on any node, on a new association.
- J.3.3.1.3 (Note): on the new association the SCU "accepts an association where the SCP role
  is proposed by the Storage Commitment SCP acting as an association requestor": nubis calls
  the address the peer table gives the calling AE title, proposing the SCP role for itself
  (SCP/SCU Role Selection, PS3.7 D.3.3.4).
- J.3.3.1.2: the report carries the Transaction UID of the N-ACTION, and every referenced SOP
  Instance in either Referenced SOP Sequence (committed) or Failed SOP Sequence (with a Failure
  Reason, PS3.3 C.14.1.1); Event Type 1 when all are committed, 2 otherwise. "After the
  N-EVENT-REPORT has been sent, the Transaction UID is no longer active".
- Timing: Annex J sets the SCP no deadline. The SCU states "how long will the SCU wait for a
  N-EVENT-REPORT" (J.3.6.1.1); a report the SCU has stopped waiting for is useless, so an
  undelivered one is retried (``dimse_commitment_retry_seconds``, doubling up to an hour) until
  ``dimse_commitment_give_up_seconds`` after the request, then dropped with an ERROR log and an
  audit record. A report counts as delivered when the SCU answers it 0x0000.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]

from nubis.dimse.reactor import RaceFreeAE
from nubis.errors import BlobCorrupted, NubisError, RestoreRequired, StorageUnavailable
from nubis.jobs.context import JobContext, JobFailed
from nubis.jobs.runner import JobRunner
from nubis.model.audit import ActiveParticipant, EventOutcome
from nubis.security import audit_events

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from nubis.dimse.peers import PeerTable
    from nubis.index.database import Index
    from nubis.jobs.store import JobStore
    from nubis.model.records import StoredInstance
    from nubis.services.guard import Guard
    from nubis.services.retrieve import RetrieveService

__all__ = ["KIND", "CommitmentReports", "CommitmentRequest", "retry_delay"]

log = logging.getLogger("nubis.dimse")

KIND = "commitment-report"
# The well-known Storage Commitment Push Model SOP Instance (PS3.4 J.3.5).
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
# Failure Reasons (PS3.3 C.14.1.1).
PROCESSING_FAILURE = 0x0110
NO_SUCH_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119

_LONGEST_DELAY = 3600.0
# Attempts a report may lose to nodes that die mid-attempt, on top of its retry schedule.
_SPARE_ATTEMPTS = 3
_TIMEOUT = 30  # seconds: TCP connect, association set-up, the N-EVENT-REPORT response


def retry_delay(attempt: int, first: float) -> float:
    """Seconds from failed attempt ``attempt`` (1, 2, ...) to the next: ``first``, doubling,
    at most an hour (or ``first`` if longer)."""
    return min(float(first) * 2 ** (attempt - 1), max(first, _LONGEST_DELAY))


def attempts_within(give_up: float, first: float) -> int:
    """Attempts the retry schedule makes before ``give_up`` seconds, spares included: a job's
    ``max_attempts``, so that the give-up time and not the count ends a report's retries."""
    attempts, elapsed = 1, 0.0
    while elapsed < give_up:
        elapsed += retry_delay(attempts, first)
        attempts += 1
    return attempts + _SPARE_ATTEMPTS


@dataclass(frozen=True)
class CommitmentRequest:
    """A Storage Commitment Request as a job keeps it (its ``params``): who asked, in which
    tenant, the Transaction UID and the referenced (SOP Class UID, SOP Instance UID) pairs.

    Only the references are kept, not a result: every attempt checks again which objects are
    stored and verify, so the report states what is true when the SCU reads it. The report is
    the SCP's commitment (J.3.3.1.2: Event Type 1 only once the SCP "has successfully completed
    storage commitment" for every instance), on which the SCU may delete its copies (PS3.17
    CC.1.1); a result computed hours before could commit an object deleted or damaged since.
    An object stored after the N-ACTION is committed by a later attempt: the SCP need not
    assess the list at once (J.3.2.1.3 Note 2).
    """

    calling_ae: str
    partition: str
    transaction_uid: str
    references: tuple[tuple[str, str], ...]

    @classmethod
    def from_action(
        cls, calling_ae: str, partition: str, action_information: Dataset
    ) -> CommitmentRequest:
        return cls(
            calling_ae,
            partition,
            str(action_information.TransactionUID),
            tuple(
                (
                    str(ref.get("ReferencedSOPClassUID", "")),
                    str(ref.get("ReferencedSOPInstanceUID", "")),
                )
                for ref in action_information.get("ReferencedSOPSequence", [])
            ),
        )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CommitmentRequest:
        return cls(
            params["calling_ae"],
            params["partition"],
            params["transaction_uid"],
            tuple((str(c), str(i)) for c, i in params["references"]),
        )

    def params(self) -> dict[str, Any]:
        return {
            "calling_ae": self.calling_ae,
            "partition": self.partition,
            "transaction_uid": self.transaction_uid,
            "references": [list(pair) for pair in self.references],
        }


@dataclass(frozen=True)
class CommitmentResult:
    """The N-EVENT-REPORT of one attempt: Event Type ID, Event Information, and the stored
    instances it names (for the audit record)."""

    event_type: int
    information: Dataset
    found: tuple[StoredInstance, ...]

    @property
    def committed(self) -> int:
        return len(self.information.get("ReferencedSOPSequence", []))

    @property
    def failed(self) -> int:
        return len(self.information.get("FailedSOPSequence", []))


class NotDelivered(Exception):
    """An attempt that did not get the report to the SCU; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CommitmentReports:
    """Queues Storage Commitment reports as jobs and delivers them (the ``commitment-report``
    handler, :meth:`deliver`), from whichever node runs the job."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        index: Index,
        retrieve: RetrieveService,
        guard: Guard,
        peers: PeerTable,
        ae_title: str,
        retry_seconds: float,
        give_up_seconds: float,
        lease_seconds: float,
    ) -> None:
        self._jobs = jobs
        self._index = index
        self._retrieve = retrieve
        self._guard = guard
        self._peers = peers
        self._ae_title = ae_title
        self._retry_seconds = retry_seconds
        self._give_up_seconds = give_up_seconds
        # Runs first attempts here, with the N-ACTION's association at hand; it never looks
        # for other work, which the job runners of every node do.
        self._here = JobRunner(jobs, {KIND: self.deliver}, lease_seconds=lease_seconds)

    def queue(self, request: CommitmentRequest) -> int:
        """Make the request a job, due now; its id. Raises when the index cannot take it."""
        job_id = self._jobs.enqueue(
            KIND,
            request.params(),
            max_attempts=attempts_within(self._give_up_seconds, self._retry_seconds),
            created_by=f"dimse:{request.calling_ae}",
        )
        assert job_id is not None  # None only for a unique key, which these jobs have not
        return job_id

    def first_attempt(self, job_id: int, association: Association) -> None:
        """Deliver the report of job ``job_id`` now, on ``association`` if it is still open;
        a runner that took the job first (of any node) delivers it instead."""
        if not self._here.run_job(job_id, lambda ctx: self.deliver(ctx, association)):
            log.info("storage commitment job %d is being delivered by another runner", job_id)

    # ------------------------------------------------------------------ one attempt
    def deliver(self, ctx: JobContext, association: Association | None = None) -> dict[str, Any]:
        """One attempt (the job handler): the report as things stand now, sent to the SCU.

        Raises JobFailed with the next attempt's delay, or without one once the give-up time
        has passed (after an ERROR log and an audit record).
        """
        request = CommitmentRequest.from_params(ctx.params)
        try:
            result, how = self._attempt(request, association)
        # Whatever failed (the SCU unreachable, or the index or blob store down), the attempt
        # is retried on this kind's schedule, so the give-up time bounds every failure.
        except Exception as exc:
            reason = exc.reason if isinstance(exc, NotDelivered | NubisError) else repr(exc)
            raise self._failed(ctx, request, reason) from exc
        log.info(
            "storage commitment %s reported to %s on %s association (event type %d, "
            "attempt %d): %d committed, %d failed",
            request.transaction_uid, request.calling_ae, how, result.event_type,
            ctx.job.attempts, result.committed, result.failed,
        )  # fmt: skip
        self._record(
            request,
            result.found,
            EventOutcome.SUCCESS,
            f"storage commitment {request.transaction_uid} reported to {request.calling_ae} "
            f"(event type {result.event_type}: {result.committed} committed, {result.failed} "
            f"failed) on attempt {ctx.job.attempts}",
        )
        return {
            "transaction_uid": request.transaction_uid,
            "event_type": result.event_type,
            "committed": result.committed,
            "failed": result.failed,
            "association": how,
        }

    def _attempt(
        self, request: CommitmentRequest, association: Association | None
    ) -> tuple[CommitmentResult, str]:
        """Send the report; it and which association took it ("the same" or "a new")."""
        result = None
        if association is not None and association.is_established:
            result = self.result(request)
            if _answered(association, result, request):
                return result, "the same"
            log.info(
                "storage commitment %s: the N-ACTION's association ended; reporting on a new one",
                request.transaction_uid,
            )
        peer = self._peers.get(request.calling_ae)
        if peer is None or not peer.host or not peer.port:
            raise NotDelivered(f"{request.calling_ae} has no address in the DIMSE peer table")
        ae = RaceFreeAE(ae_title=self._ae_title)
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = _TIMEOUT
        ae.network_timeout = _TIMEOUT
        where = f"{request.calling_ae}@{peer.host}:{peer.port}"
        assoc = ae.associate(
            peer.host,
            peer.port,
            contexts=[build_context(StorageCommitmentPushModel)],
            ae_title=peer.ae_title,
            ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
        )
        if not assoc.is_established:
            rejected = ": rejected" if assoc.is_rejected else ""
            raise NotDelivered(f"cannot associate with {where}{rejected}")
        try:
            # Checked once the association is up, not before: an SCU that stays down costs each
            # attempt a refused connection, not a re-read of every object it referenced.
            if result is None:
                result = self.result(request)
            if not _answered(assoc, result, request):
                raise NotDelivered(f"no N-EVENT-REPORT response from {where}")
        finally:
            assoc.release()
        return result, "a new"

    def result(self, request: CommitmentRequest) -> CommitmentResult:
        """The report as things stand: each reference committed only if it is stored in the
        caller's tenant under that SOP class and its blob still matches its SHA-256."""
        report = Dataset()
        report.TransactionUID = request.transaction_uid
        committed, failed, found = [], [], []
        for sop_class, sop_uid in request.references:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_uid
            # Only the caller's own tenant: a peer cannot learn what another tenant stored.
            inst = self._index.find_instance(request.partition, sop_uid)
            if inst is not None:
                found.append(inst)
            reason = self._failure_reason(inst, sop_class)
            if reason is None:
                committed.append(item)
            else:
                item.FailureReason = reason
                failed.append(item)
        if committed:
            report.ReferencedSOPSequence = committed
        if failed:
            report.FailedSOPSequence = failed
        report.RetrieveAETitle = self._ae_title
        return CommitmentResult(2 if failed else 1, report, tuple(found))

    def _failure_reason(self, inst: StoredInstance | None, sop_class: str) -> int | None:
        if inst is None:
            return NO_SUCH_INSTANCE
        if sop_class and inst.sop_class_uid != sop_class:
            return CLASS_INSTANCE_CONFLICT
        try:
            self._retrieve.verify(inst)
        except RestoreRequired:  # stored, but unreadable until restored from its archive tier
            return PROCESSING_FAILURE
        except StorageUnavailable:
            raise  # the blob store is down: try again later rather than fail the object
        except BlobCorrupted:
            log.error("storage commitment: blob of %s fails its SHA-256", inst.sop_instance_uid)
            return PROCESSING_FAILURE
        except (OSError, KeyError, NubisError):  # unreadable blob, or its key erased
            return PROCESSING_FAILURE
        return None

    # ------------------------------------------------------------------ failure, give-up
    def _failed(self, ctx: JobContext, request: CommitmentRequest, reason: str) -> JobFailed:
        """What follows a failed attempt: the next one, or, past the give-up time (or out of
        attempts), none."""
        attempts, now = ctx.job.attempts, time.time()
        give_up_at = ctx.job.created_at / 1000 + self._give_up_seconds
        if now < give_up_at and attempts < ctx.job.max_attempts:
            delay = min(retry_delay(attempts, self._retry_seconds), give_up_at - now)
            log.info(
                "storage commitment %s not reported to %s (attempt %d): %s; next in %.0f s",
                request.transaction_uid, request.calling_ae, attempts, reason, delay,
            )  # fmt: skip
            return JobFailed(reason, retry_in=delay)
        given_up = (
            f"storage commitment {request.transaction_uid}: report to {request.calling_ae} "
            f"given up after {attempts} attempt(s) in {now - ctx.job.created_at / 1000:.0f} s; "
            f"last: {reason}"
        )
        log.error("%s", given_up)
        self._record(request, self._stored(request), EventOutcome.SERIOUS_FAILURE, given_up)
        return JobFailed(f"given up after {attempts} attempt(s): {reason}", retry_in=None)

    def _stored(self, request: CommitmentRequest) -> list[StoredInstance]:
        """The referenced instances the index has (for the audit record of a give-up)."""
        try:
            found = (self._index.find_instance(request.partition, u) for _, u in request.references)
            return [inst for inst in found if inst is not None]
        except Exception:  # the index is down: the record names no patient, but is made
            log.exception("storage commitment %s: instances not looked up", request.transaction_uid)
            return []

    def _record(
        self,
        request: CommitmentRequest,
        found: Iterable[StoredInstance],
        outcome: EventOutcome,
        description: str,
    ) -> None:
        """DICOM Instances Accessed (PS3.15 A.5.3.3), one per patient as that message wants:
        PS3.15 has no storage commitment message, and a report is the outcome of reading each
        referenced object to verify it (as the verify job records its reads)."""
        who = ActiveParticipant(
            user_id=f"dimse:{request.calling_ae}",
            alternative_user_id=f"AETITLES={request.calling_ae}",
        )
        studies: dict[str | None, set[str]] = defaultdict(set)
        for inst in found:
            studies[inst.patient_id].add(inst.study_uid)
        events = [
            audit_events.instances_accessed(
                who,
                patient_id=patient_id,
                study_uids=sorted(uids),
                outcome=outcome,
                front_door="dimse",
                description=description,
            )
            for patient_id, uids in (studies or {None: set()}).items()
        ]
        try:
            self._guard.record(*events)
        except NubisError as exc:
            # The report went out (or was given up) already: recording it again would not
            # undo that, and retrying would send a second report.
            log.error(
                "storage commitment %s: audit record failed: %s",
                request.transaction_uid,
                exc.reason,
            )


def _answered(assoc: Association, result: CommitmentResult, request: CommitmentRequest) -> bool:
    """Send the N-EVENT-REPORT on ``assoc``: True when the SCU answered 0x0000, False when no
    answer came (the association ended); NotDelivered when it answered another status."""
    try:
        status, _ = assoc.send_n_event_report(
            result.information, result.event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
        )
    except (RuntimeError, ValueError) as exc:  # ended, or no context for the SCP role
        log.info("storage commitment %s: N-EVENT-REPORT not sent: %s", request.transaction_uid, exc)
        return False
    if status is None or "Status" not in status:
        return False
    if int(status.Status) != 0x0000:
        raise NotDelivered(f"{request.calling_ae} answered the report 0x{int(status.Status):04X}")
    return True
