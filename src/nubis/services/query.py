"""Query (QIDO-RS, C-FIND): authorize, narrow the query to the caller's scope, record it.

Matching itself is the index's (:mod:`nubis.index.query_sql`). What this adds is that the
caller's tenant and grants become part of the SQL statement (``Query.partition`` and
``Query.grantee``), so a page holds only studies the caller may see and paging stays exact; a
study outside the scope is never matched, as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from nubis.index.database import Index
from nubis.index.query_sql import Page
from nubis.model.audit import AuditEvent
from nubis.model.query import Level, Query
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard


@dataclass(frozen=True)
class ScopedQuery:
    """A query that went through :meth:`QueryService.scoped`: authorized, recorded, and
    limited to the caller's scope. Only such a query can be paged."""

    query: Query

    def at(self, offset: int) -> ScopedQuery:
        return ScopedQuery(replace(self.query, offset=offset))


class QueryService:
    def __init__(self, index: Index, guard: Guard) -> None:
        self.index = index
        self.guard = guard

    def scoped(self, who: Principal, query: Query, *, text: str | bytes = "") -> ScopedQuery:
        """``query`` limited to what ``who`` may see, after recording it (PS3.15 A.5.3.10).

        Raises Forbidden (403 / 0x0124) for roles that may not read. ``text`` is the query as
        the client sent it (QIDO-RS query string or encoded C-FIND identifier), for the record.
        Front doors that walk pages (C-FIND) call this once, then :meth:`page` per page.
        """
        scoped, event = self._authorized(who, query, text)
        self.guard.record(event)
        return scoped

    def page(self, scoped: ScopedQuery) -> Page:
        """One page of a query that :meth:`scoped` returned (``scoped.at(offset)`` for more)."""
        return self.index.search(scoped.query)

    def matches(self, scoped: ScopedQuery) -> Iterator[dict[str, Any]]:
        """Every match of a query that :meth:`scoped` returned, a page at a time (DICOM JSON
        items): what C-FIND answers and C-MOVE / C-GET select, in bounded memory."""
        offset = 0
        while True:
            page = self.page(scoped.at(offset))
            yield from page.items
            if not page.more or not page.items:
                return
            offset += len(page.items)

    def within(
        self, scoped: ScopedQuery, level: Level, study_uid: str, include: frozenset[int]
    ) -> Iterator[dict[str, Any]]:
        """Every series or instance of ``study_uid`` (``include`` returned), under the scope of
        a query :meth:`scoped` authorized and recorded: what a FHIR ImagingStudy lists of a
        study that query found. No record of its own: it is part of the one recorded."""
        narrowed = replace(
            scoped.query,
            level=level,
            matches=(),
            include=include,
            limit=1000,
            offset=0,
            limit_capped=True,
            study_uid=study_uid,
            series_uid=None,
            order=None,
        )
        return self.matches(ScopedQuery(narrowed))

    def search(self, who: Principal, query: Query, *, text: str | bytes = "") -> Page:
        """Authorize, record and run ``query`` for ``who`` (one page).

        The query runs while its record commits; the page is returned only once it has.
        """
        scoped, event = self._authorized(who, query, text)
        with self.guard.recording(event):
            return self.page(scoped)

    def _authorized(
        self, who: Principal, query: Query, text: str | bytes
    ) -> tuple[ScopedQuery, AuditEvent]:
        decision = self.guard.authorize(who, Action.READ, f"query {query.level.name.lower()}s")
        assert decision.scope is not None
        event = audit_events.query(
            who,
            text or f"{query.level.name} query",
            request_id=who.request_id,
            break_glass_reason=decision.break_glass,
        )
        scope = decision.scope
        scoped = replace(
            query,
            partition=scope.partition,
            grantee=scope.grantee,
            hide_quarantined=not scope.sees_quarantine,
        )
        return ScopedQuery(scoped), event
