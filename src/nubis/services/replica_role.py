"""A read-only replica: clients read, only the primary's replication service writes.

With ``replica_of`` set, the archive is the replica of that primary until ``nubis replication
promote`` records its promotion in the index (``replication_state.promoted_at``). Until then
:class:`~nubis.services.guard.Guard` refuses every change (store, delete, correction,
crypto-shred; DICOMweb, DIMSE, the web face's uploads and the CLI alike) with
:class:`ReadOnlyReplica`, except from the user ``replica_writer`` (the primary's replication
credential) and the archive's own jobs (principals ``via="system"``: a re-key a replicated
correction queued, the reaper). Reads are untouched.

The refusal is HTTP 403 (RFC 9110 15.5.4: understood, and refused whoever asks again) and,
over DIMSE, 0x0124 Refused: Not Authorized, one of the general statuses of PS3.7 Annex C that
every DIMSE service may answer beside its own (PS3.4 B.2.3 for C-STORE). Chosen over the
C-STORE statuses of PS3.4 Table B.2-1: 0xA7xx Refused: Out of Resources invites the sender to
retry, which never helps here, and 0xC000 Error: Cannot Understand blames the data set. The
Error Comment (and the HTTP reason) names the primary to send to instead.

Every node of a replica reads the promotion from the index, at most RECHECK_SECONDS late, so a
promotion (or ``nubis replication demote``, which makes a promoted archive a read-only replica
again, for a fail-back) reaches the running servers without a restart.
"""

from __future__ import annotations

import threading
import time

from nubis.errors import Forbidden
from nubis.index import outbox_sql
from nubis.index.database import Index
from nubis.logs import redact_url
from nubis.security.policy import Principal

__all__ = ["RECHECK_SECONDS", "ReadOnlyReplica", "ReplicaRole"]

RECHECK_SECONDS = 2.0


class ReadOnlyReplica(Forbidden):
    """A change refused by a read-only replica (403, DIMSE 0x0124; see the module docs)."""


class ReplicaRole:
    def __init__(
        self, index: Index, primary: str, writer: str, *, recheck_seconds: float = RECHECK_SECONDS
    ) -> None:
        self.index = index
        self.primary = redact_url(primary)
        self.writer = writer
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._promoted = False
        self._checked_at = float("-inf")

    def refuse_change(self, who: Principal) -> None:
        """ReadOnlyReplica unless ``who`` may change this archive now."""
        if who.via == "system" or (who.id == self.writer and who.via != "cli"):
            return
        if self.promoted():
            return
        raise ReadOnlyReplica(
            f"this archive is a read-only replica of {self.primary}: it takes no stores, "
            "deletes, corrections or shreds but the primary's; send them to the primary (or "
            "promote this replica: nubis replication promote)"
        )

    def promoted(self) -> bool:
        """Whether the replica is promoted now (as the index said at most recheck_seconds
        ago: a promotion, or a demotion for a fail-back, reaches every node that late)."""
        with self._lock:
            if time.monotonic() - self._checked_at < self.recheck_seconds:
                return self._promoted
            with self.index.reading() as conn:
                self._promoted = outbox_sql.promoted(conn) is not None
            self._checked_at = time.monotonic()
            return self._promoted
