"""The UPS event channel's service: the event reports queued for a subscribed AE (PS3.4
CC.2.4), handed to its channel (nubis.web.dicomweb.ups_events) within the caller's scope.

Reports are queued by nubis.services.worklist in the transaction of the change they report
(table ``workitem_events``, one row per report and AE), so a channel on any worker or node
sees them: it reads the AE's rows, oldest first, sends them, and deletes them. The reports of
one workitem are queued in the order of its changes (each change holds the workitem's row
lock while it queues), so they arrive in that order. Opening a
channel needs READ; a report about a workitem the caller may not read (for a referrer, one
outside its grants) is never handed out, and stays queued for a caller that may. Opening the
channel and each batch handed out are recorded (Procedure Record); reports carry no patient
attributes and nothing here is logged about a workitem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nubis.index import workitem_events_sql as events
from nubis.index import workitems_sql as sql
from nubis.index.database import Index
from nubis.model.audit import EventAction
from nubis.security import audit_events
from nubis.security.policy import Action, Principal
from nubis.services.guard import Guard
from nubis.services.worklist import check_ae_title

__all__ = ["Batch", "WorklistEvents"]

BATCH_SIZE = 100


@dataclass(frozen=True)
class Batch:
    """Reports to send, oldest first (``ids``: their rows), and the rows of reports the
    caller may not read, to pass over from now on."""

    reports: list[dict[str, Any]]
    ids: list[int]
    hidden: frozenset[int]


class WorklistEvents:
    def __init__(self, index: Index, guard: Guard) -> None:
        self.index = index
        self.guard = guard

    def open(self, who: Principal, ae_title: str) -> str:
        """Authorize ``who`` to receive the reports of ``ae_title`` (READ); the AE title."""
        ae_title = check_ae_title(ae_title)
        decision = self.guard.authorize(who, Action.READ, f"open the event channel of {ae_title}")
        self.guard.record(
            audit_events.procedure_record(
                who,
                action=EventAction.EXECUTE,
                request_id=who.request_id,
                break_glass_reason=decision.break_glass,
                description=f"{ae_title} opened its UPS event channel",
            )
        )
        return ae_title

    def next_batch(self, who: Principal, ae_title: str, hidden: frozenset[int]) -> Batch:
        """The reports queued for ``ae_title`` that ``who`` may read, but those ``hidden``."""
        with self.index.reading() as conn:
            queued = events.pending(conn, who.tenant, ae_title, hidden, BATCH_SIZE)
        if not queued:
            return Batch([], [], hidden)
        # Authorized again for each batch: a key revoked or a role changed stops the flow.
        decision = self.guard.authorize(who, Action.READ, f"receive the reports of {ae_title}")
        assert decision.scope is not None
        grantee = decision.scope.grantee
        with self.index.reading() as conn:
            shown = [
                q
                for q in queued
                if grantee is None or sql.visible(conn, who.tenant, grantee, q.workitem_uid)
            ]
        if shown:
            self.guard.record(
                audit_events.procedure_record(
                    who,
                    action=EventAction.READ,
                    request_id=who.request_id,
                    break_glass_reason=decision.break_glass,
                    description=f"{len(shown)} UPS event report(s) sent to {ae_title}",
                )
            )
        hidden = hidden | {q.id for q in queued} - {q.id for q in shown}
        return Batch([q.report for q in shown], [q.id for q in shown], hidden)

    def sent(self, ids: list[int]) -> None:
        """Forget the reports sent over a channel."""
        if ids:
            self.index.write(lambda conn: events.delete(conn, ids))
