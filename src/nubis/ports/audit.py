"""The audit port: where the services record every access to patient data.

Unlike the design guide's ``AuditSink.emit`` ("never raises into the request path"), nubis
records fail closed: :meth:`AuditRecorder.record` returns only once the record is durably
committed, and raises otherwise, so the caller refuses the access it could not audit. HIPAA
164.312(b) asks that access be recorded; an archive that serves data it could not account for
would make its audit trail a sample, not a record. The cost is one group commit shared with
concurrent writes (see nubis.security.audit). Reads may be recorded in batches within a bounded
window instead (nubis.security.audit_reads); reads are refused while those batches fail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from nubis.model.audit import AuditEvent


@dataclass(frozen=True)
class AuditReceipt:
    """Where a record landed: its sequence number and the chain hash (hex SHA-256) after it."""

    seq: int
    hash: str


class AuditRecorder(Protocol):
    def record(self, event: AuditEvent) -> AuditReceipt:
        """Durably append ``event``; raises ``AuditUnavailable`` (HTTP 503, DIMSE 0xA700) if
        it cannot, and the caller must then refuse the access."""

    def is_deferred(self, event: AuditEvent) -> bool:
        """Whether ``record(event)`` only queues it (a read, see nubis.security.audit_reads):
        it returns at once, and raises only when the trail is failing."""

    def record_many(self, events: list[AuditEvent]) -> list[AuditReceipt]:
        """Append several events in one commit, in order; all or none."""

    def append_job(self, events: Sequence[AuditEvent]) -> Callable[[Any], list[AuditReceipt]]:
        """An index write job that appends ``events``, to run inside another write job's
        transaction: the records commit together with that write, or neither does."""
