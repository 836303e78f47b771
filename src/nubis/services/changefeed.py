"""The change feed, as callers read it (``GET /changefeed``, the webhooks job): authorized,
scoped and recorded like every read.

The caller's tenant, grants and quarantine visibility go into the SQL (nubis.index.feed_sql), so
a referrer's feed holds only the entries of studies it may see, and paging by ``since`` stays
exact. Each page is recorded as a Query (PS3.15 A.5.3.10) naming the cursor.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from nubis.errors import BadRequest, Gone
from nubis.index import feed_sql
from nubis.index.database import Index
from nubis.index.feed_sql import Entry
from nubis.security import audit_events
from nubis.security.policy import Action, Principal, Scope
from nubis.services.guard import Guard

__all__ = ["MAX_LIMIT", "ChangeFeedService", "entry_json"]

MAX_LIMIT = 1000


class ChangeFeedService:
    def __init__(self, index: Index, guard: Guard) -> None:
        self.index = index
        self.guard = guard

    def page(self, who: Principal, since: int, limit: int) -> list[Entry]:
        """The first ``limit`` entries after ``since`` that ``who`` may see, in commit order.

        BadRequest for a negative cursor or a limit outside 1..MAX_LIMIT; Gone (410) when
        entries after ``since`` were removed by the retention expiry (the client would miss
        them: it must start again from ``/changefeed/latest``)."""
        if since < 0:
            raise BadRequest(f"since must be a sequence number >= 0, got {since}")
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be 1 to {MAX_LIMIT}, got {limit}")
        scope = self._scope(who, f"changefeed?since={since}&limit={limit}")
        with self.index.reading() as conn:
            expired = feed_sql.expired_through(conn)
            if since < expired:
                raise Gone(
                    f"entries up to sequence {expired} were removed after their retention "
                    f"period; page from since={expired} or from /changefeed/latest"
                )
            return feed_sql.page(
                conn,
                scope.partition,
                since,
                limit,
                grantee=scope.grantee,
                hide_quarantined=not scope.sees_quarantine,
            )

    def latest(self, who: Principal) -> Entry | None:
        """The newest entry ``who`` may see (None: none yet)."""
        scope = self._scope(who, "changefeed/latest")
        with self.index.reading() as conn:
            return feed_sql.latest(
                conn,
                scope.partition,
                grantee=scope.grantee,
                hide_quarantined=not scope.sees_quarantine,
            )

    def expire(self, retention_days: int) -> int:
        """Remove entries past the retention period (the ``changefeed-expire`` job); how many.
        Maintenance of the feed itself, as the reaper is of blobs: nothing is read."""
        before = _retention_start(retention_days)
        return self.index.write(lambda conn: feed_sql.expire(conn, before))

    def expiry_due(self, retention_days: int) -> bool:
        """Whether an entry is past the retention period (the expiry job is queued only then)."""
        with self.index.reading() as conn:
            return feed_sql.has_older_than(conn, _retention_start(retention_days))

    def _scope(self, who: Principal, text: str) -> Scope:
        decision = self.guard.authorize(who, Action.READ, "read the change feed")
        assert decision.scope is not None
        self.guard.record(
            audit_events.query(
                who, text, request_id=who.request_id, break_glass_reason=decision.break_glass
            )
        )
        return decision.scope


def _retention_start(retention_days: int) -> int:
    return int(time.time() * 1000) - retention_days * 86400_000


def entry_json(entry: Entry) -> dict[str, Any]:
    """An entry as ``GET /changefeed`` lists it and a webhook carries it: the shape of the
    Azure DICOM service's change feed (Sequence, Action, State, the three UIDs, Timestamp),
    with the tenant, the modality and what kind of update it was. UIDs only: no attribute that
    names a patient."""
    return {
        "Sequence": entry.seq,
        "Action": entry.action,
        "State": entry.state,
        "Detail": entry.detail,
        "Tenant": entry.partition,
        "StudyInstanceUid": entry.study_uid,
        "SeriesInstanceUid": entry.series_uid,
        "SopInstanceUid": entry.sop_instance_uid,
        "Modality": entry.modality,
        "Timestamp": datetime.fromtimestamp(entry.created_at / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }
