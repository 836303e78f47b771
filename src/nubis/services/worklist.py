"""Worklists: Unified Procedure Step workitems (PS3.4 Annex CC) handed out and performed.

What UPS-RS (web/dicomweb/ups.py, PS3.18 11) calls. Every call is authorized by the Guard
and recorded in the audit trail (Procedure Record; a search as a Query naming the UPS Pull SOP
Class), in the tenant of the caller:

- creating, updating, changing the state of a workitem and asking for its cancellation need
  the WORKLIST action (admins and radiologists);
- retrieving and searching need READ and see the tenant's workitems, or for roles limited to
  grants (referrers) only the workitems of a granted patient or study: any other workitem is
  absent (404), as an out-of-scope study is;
- subscribing to a workitem's events needs READ on that workitem; subscribing to the whole
  worklist needs READ on the whole tenant.

The state machine is PS3.4 Table CC.1.1-2: a workitem is created SCHEDULED; claiming it
(IN PROGRESS) takes a Transaction UID, which every later state change and update must give;
COMPLETED needs the final state attributes of CC.2.5.1.3; COMPLETED and CANCELED are final.
A refusal is a :class:`~nubis.errors.WorkitemRefused` with the UPS status of CC.2.1.3 and the
HTTP status of PS3.18 11.6.3, 11.7.3 or 11.8.3 (:func:`transition` decides). The Transaction
UID is the claim's lock: never returned, never logged. Patient attributes of a workitem are
patient data: in audit records only.

Subscriptions are recorded (PS3.4 CC.2.3) and listed. Each change a subscriber must hear of
(a creation, a state change, a cancellation request; and the current state when it subscribes,
CC.2.3.2) queues an event report (nubis.model.ups_event) for each subscribed AE in the same
transaction; the AE's event channel (nubis.services.worklist_events) delivers them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydicom.uid import generate_uid
from sqlalchemy import Connection

from nubis.dicom.uids import is_usable
from nubis.errors import BadRequest, Forbidden, NotFound, WorkitemRefused
from nubis.index import workitem_events_sql as events
from nubis.index import workitems_sql as sql
from nubis.index.database import Index
from nubis.model import workitem as wi
from nubis.model.audit import AuditEvent, EventAction, EventOutcome
from nubis.model.ups_event import cancel_requested, state_report
from nubis.model.workitem import JsonDataSet, State
from nubis.model.workitem_search import WorkitemQuery, parse_filter
from nubis.security import audit_events
from nubis.security.policy import Action, Decision, Principal
from nubis.services.guard import Guard

__all__ = ["Subscription", "Transition", "WorklistService", "transition"]

T = TypeVar("T")

# UPS statuses (PS3.4 Table CC.2.1-2 and its siblings; PS3.7 C.4).
C300_NO_LONGER_UPDATABLE = 0xC300
C301_TRANSACTION_UID = 0xC301
C302_ALREADY_IN_PROGRESS = 0xC302
C303_ONLY_CREATED_SCHEDULED = 0xC303
C304_FINAL_STATE_REQUIREMENTS = 0xC304
C310_NOT_IN_PROGRESS = 0xC310
C311_ALREADY_COMPLETED = 0xC311
C312_PERFORMER_UNREACHABLE = 0xC312
B304_ALREADY_CANCELED = 0xB304
B306_ALREADY_COMPLETED = 0xB306

_AE_TITLE_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !#$%&'()*+,-./:;<=>?@[]^_`{|}~"
)
_WORKLISTS = (wi.WORKLIST_UID, wi.FILTERED_WORKLIST_UID)


@dataclass(frozen=True)
class Transition:
    """What a state change does: the state it leaves the workitem in, its Transaction UID
    afterwards, and a warning (PS3.4 B304/B306) when nothing changed."""

    state: State
    transaction_uid: str | None
    warning: tuple[int, str] | None = None


def _refused(reason: str, http_status: int, status: int) -> WorkitemRefused:
    return WorkitemRefused(reason, http_status=http_status, dimse_status=status)


def _check_transaction(given: str | None, held: str | None) -> None:
    if given is None:
        raise _refused("The Transaction UID is missing.", 400, C301_TRANSACTION_UID)
    if given != held:
        raise _refused("The Transaction UID is incorrect.", 400, C301_TRANSACTION_UID)


def transition(current: State, requested: str, given: str | None, held: str | None) -> Transition:
    """The Change UPS State of PS3.4 Table CC.1.1-2 from ``current`` to ``requested`` with the
    Transaction UID ``given`` (``held``: the workitem's). HTTP statuses per PS3.18 11.7.3: 400
    for a request that cannot be right in any state (no or a wrong Transaction UID, a return to
    SCHEDULED), 409 for one the workitem's current state refuses."""
    try:
        target = State(requested)
    except ValueError:
        raise BadRequest(
            "Procedure Step State (0074,1000) must be IN PROGRESS, COMPLETED or CANCELED"
        ) from None
    if target is State.SCHEDULED:
        raise _refused(
            "The UPS may only become SCHEDULED via its creation.", 400, C303_ONLY_CREATED_SCHEDULED
        )
    if current is State.COMPLETED and target is State.COMPLETED:
        return Transition(current, None, (B306_ALREADY_COMPLETED, "The UPS is already COMPLETED."))
    if current is State.CANCELED and target is State.CANCELED:
        return Transition(current, None, (B304_ALREADY_CANCELED, "The UPS is already CANCELED."))
    if current.final:
        raise _refused(
            f"The UPS is {current.value} and may no longer be updated.",
            409,
            C300_NO_LONGER_UPDATABLE,
        )
    if target is State.IN_PROGRESS:
        if current is State.IN_PROGRESS:
            raise _refused("The UPS is already IN PROGRESS.", 409, C302_ALREADY_IN_PROGRESS)
        if given is None:
            raise _refused("The Transaction UID is missing.", 400, C301_TRANSACTION_UID)
        return Transition(State.IN_PROGRESS, given)
    if current is State.SCHEDULED:
        raise _refused(
            f"The UPS is not yet IN PROGRESS: claim it before it can be {target.value}.",
            409,
            C310_NOT_IN_PROGRESS,
        )
    _check_transaction(given, held)
    return Transition(target, None)


@dataclass(frozen=True)
class Subscription:
    """A subscription as listed: the AE, what it watches (a workitem's UID or a worklist's
    well-known UID), whether it holds a deletion lock, the filter of a filtered worklist."""

    ae_title: str
    target_uid: str
    deletion_lock: bool
    filter: str | None
    created_by: str
    created_at: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "aeTitle": self.ae_title,
            "target": self.target_uid,
            "deletionLock": self.deletion_lock,
            "filter": self.filter,
            "createdBy": self.created_by,
            "createdAt": self.created_at,
        }


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _now_dt() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")


def check_ae_title(ae_title: str) -> str:
    """An AE title from a URL (PS3.5 Table 6.2-1: 1-16 characters, no backslash or control
    character, not only spaces), else a 400."""
    if not 0 < len(ae_title) <= 16 or not set(ae_title) <= _AE_TITLE_CHARS or not ae_title.strip():
        raise BadRequest("the AE title must be 1 to 16 printable characters (PS3.5 AE)")
    return ae_title.strip()


class WorklistService:
    def __init__(self, index: Index, guard: Guard) -> None:
        self.index = index
        self.guard = guard

    # ------------------------------------------------------------------ workitems
    def create(self, who: Principal, data: JsonDataSet, workitem_uid: str | None) -> str:
        """Create Workitem (PS3.18 11.4): the new workitem's UID (``workitem_uid``, the data
        set's SOP Instance UID, or a new one). Conflict (409) when the tenant holds one of
        that UID already."""
        decision = self._authorize(who, Action.WORKLIST, "create a workitem", data)
        # No UID given: the server assigns one (PS3.18 11.4.1, as N-CREATE lets an SCP do),
        # a UUID-derived 2.25 UID that needs no registered root.
        uid = workitem_uid or wi.text(data, wi.SOP_INSTANCE_UID) or generate_uid(prefix=None)
        if not is_usable(uid):
            raise BadRequest(f"the workitem UID ({len(uid)} characters) is not a valid UID")
        new = wi.check_new(data, uid)
        event = self._event(who, EventAction.CREATE, new, f"workitem {uid} created", decision)

        def job(conn: Connection) -> None:
            if not sql.insert(conn, who.tenant, uid, new, who.id, _now_ms()):
                raise _refused("The Target Workitem already exists.", 409, 0x0111)
            for subscription in sql.subscriptions(conn, who.tenant, targets=_WORKLISTS):
                if self._covers(conn, who.tenant, subscription, uid):
                    sql.subscribe(
                        conn,
                        who.tenant,
                        subscription.ae_title,
                        uid,
                        deletion_lock=subscription.deletion_lock,
                        filter_text=None,
                        who=who.id,
                        now=_now_ms(),
                    )
            # The worklist's subscribers now watch it: its initial state (PS3.4 CC.2.3.2).
            events.enqueue(conn, who.tenant, uid, state_report(uid, new), _now_ms())
            self._commit_record(conn, event)

        self.index.write(job)
        return uid

    def retrieve(self, who: Principal, uid: str) -> JsonDataSet:
        """Retrieve Workitem (PS3.18 11.5): the data set, without the Transaction UID."""
        decision = self._authorize(who, Action.READ, f"retrieve workitem {uid}")
        with self.index.reading() as conn:
            row = self._visible(conn, who, decision, uid)
        self.guard.record(
            self._event(who, EventAction.READ, row.data, f"workitem {uid} read", decision)
        )
        return row.data

    def update(self, who: Principal, uid: str, changes: JsonDataSet) -> None:
        """Update Workitem (PS3.18 11.6, N-SET): set the attributes given. A workitem IN
        PROGRESS needs its Transaction UID; a final one is never updated."""
        decision = self._authorize(who, Action.WORKLIST, f"update workitem {uid}")
        given = wi.text(changes, wi.TRANSACTION_UID)
        changes = wi.check_update(changes)

        def job(conn: Connection) -> None:
            row = self._found(conn, who, uid)
            state = State(row.state)
            if state.final:
                raise _refused(
                    f"The UPS is {state.value} and may no longer be updated.",
                    400,
                    C300_NO_LONGER_UPDATABLE,
                )
            if state is State.IN_PROGRESS:
                _check_transaction(given, row.transaction_uid)
            elif given is not None:
                raise _refused(
                    "The UPS is not yet IN PROGRESS: it has no Transaction UID to give.",
                    409,
                    C310_NOT_IN_PROGRESS,
                )
            data = wi.updated(row.data, changes)
            sql.save(
                conn,
                row.id,
                data,
                transaction_uid=row.transaction_uid,
                performer=row.performer,
                now=_now_ms(),
            )
            event = self._event(who, EventAction.UPDATE, data, f"workitem {uid} updated", decision)
            self._commit_record(conn, event)

        self._write_audited(who, uid, "update", job)

    def change_state(self, who: Principal, uid: str, request: JsonDataSet) -> str | None:
        """Change Workitem State (PS3.18 11.7, N-ACTION Change UPS State): claim (IN
        PROGRESS, giving a new Transaction UID), complete or cancel. The warning of a request
        that found the workitem in the state asked for, else None."""
        decision = self._authorize(who, Action.WORKLIST, f"change the state of workitem {uid}")
        requested = wi.text(request, wi.STATE)
        if requested is None:
            raise BadRequest("the request needs Procedure Step State (0074,1000)")
        given = wi.text(request, wi.TRANSACTION_UID)
        if given is not None and not is_usable(given):
            raise BadRequest("the Transaction UID (0008,1195) is not a valid UID")

        def job(conn: Connection) -> str | None:
            row = self._found(conn, who, uid)
            step = transition(State(row.state), requested, given, row.transaction_uid)
            if step.warning is not None:
                return f"{step.warning[1]} (0x{step.warning[0]:04X})"
            data = wi.with_state(row.data, step.state)
            if step.state is State.COMPLETED:
                missing = wi.completion_missing(row.data)
                if missing is not None:
                    raise _refused(
                        f"The UPS has not met final state requirements: {missing} "
                        "(PS3.4 CC.2.5.1.3).",
                        409,
                        C304_FINAL_STATE_REQUIREMENTS,
                    )
            elif step.state is State.CANCELED:
                data = wi.canceled(row.data, {}, _now_dt())
            performer = who.id if step.state is State.IN_PROGRESS else row.performer
            sql.save(
                conn,
                row.id,
                data,
                transaction_uid=step.transaction_uid,
                performer=performer,
                now=_now_ms(),
            )
            events.enqueue(conn, who.tenant, uid, state_report(uid, data), _now_ms())
            what = "claimed (IN PROGRESS)" if step.state is State.IN_PROGRESS else step.state.value
            self._commit_record(
                conn,
                self._event(who, EventAction.UPDATE, data, f"workitem {uid} {what}", decision),
            )
            return None

        return self._write_audited(who, uid, "change the state of", job)

    def request_cancellation(self, who: Principal, uid: str, request: JsonDataSet) -> str | None:
        """Request Cancellation (PS3.18 11.8, N-ACTION Request UPS Cancel). A SCHEDULED
        workitem is canceled at once (PS3.4 CC.2.4.3); for one IN PROGRESS, which only its
        performer may cancel, its subscribers are sent a UPS Cancel Requested report, and with
        no subscriber to tell the request is refused (409, 0xC312, PS3.18 11.8.3); the warning
        when it is CANCELED already, else None."""
        decision = self._authorize(who, Action.WORKLIST, f"request cancellation of {uid}")

        def job(conn: Connection) -> str | None:
            row = self._found(conn, who, uid)
            state = State(row.state)
            now = _now_ms()
            if state is State.CANCELED:
                return f"The UPS is already CANCELED. (0x{B304_ALREADY_CANCELED:04X})"
            if state is State.COMPLETED:
                raise _refused("The UPS is already COMPLETED.", 409, C311_ALREADY_COMPLETED)
            if state is State.IN_PROGRESS:
                if not events.enqueue(conn, who.tenant, uid, cancel_requested(uid, request), now):
                    raise _refused(
                        "The performer of the UPS IN PROGRESS cannot be told of a "
                        "cancellation request: no AE is subscribed to it.",
                        409,
                        C312_PERFORMER_UNREACHABLE,
                    )
                what = f"workitem {uid}: cancellation requested of its performer"
                self._commit_record(
                    conn, self._event(who, EventAction.UPDATE, row.data, what, decision)
                )
                return None
            data = wi.canceled(row.data, request, _now_dt())
            sql.save(conn, row.id, data, transaction_uid=None, performer=None, now=now)
            events.enqueue(conn, who.tenant, uid, state_report(uid, data), now)
            self._commit_record(
                conn,
                self._event(
                    who, EventAction.UPDATE, data, f"workitem {uid} CANCELED on request", decision
                ),
            )
            return None

        return self._write_audited(who, uid, "request cancellation of", job)

    def search(
        self, who: Principal, query: WorkitemQuery, *, text: str = ""
    ) -> tuple[list[JsonDataSet], bool]:
        """Search for Workitems (PS3.18 11.9): one page, and whether more follow."""
        decision = self._authorize(who, Action.READ, "search workitems")
        assert decision.scope is not None
        event = audit_events.query(
            who,
            text or "workitems",
            sop_class_uid=wi.UPS_PULL_SOP_CLASS,
            request_id=who.request_id,
            break_glass_reason=decision.break_glass,
        )
        with self.guard.recording(event), self.index.reading() as conn:
            return sql.search(conn, decision.scope.partition, decision.scope.grantee, query)

    # ------------------------------------------------------------------ subscriptions
    def subscribe(
        self,
        who: Principal,
        target_uid: str,
        ae_title: str,
        *,
        deletion_lock: bool = False,
        filter_text: str | None = None,
    ) -> None:
        """Subscribe (PS3.18 11.10, PS3.4 CC.2.3): ``ae_title`` watches one workitem, the
        worklist (every workitem not final, and each one created), or the workitems matching
        ``filter_text`` (the Filtered Worklist)."""
        decision = self._authorize_watch(who, target_uid, f"subscribe to {target_uid}")
        ae_title = check_ae_title(ae_title)
        query = None
        if target_uid == wi.FILTERED_WORKLIST_UID:
            if not filter_text:
                raise BadRequest("a Filtered Worklist subscription needs a filter (PS3.18 11.10)")
            query = parse_filter(filter_text)
        elif filter_text:
            raise BadRequest("only a Filtered Worklist subscription takes a filter")
        event = self._watch_event(who, f"{ae_title} subscribed to {target_uid}", decision)

        def job(conn: Connection) -> None:
            now = _now_ms()
            if target_uid in _WORKLISTS:
                covered = sql.matching_uids(conn, who.tenant, query or WorkitemQuery())
                watched = [sql.find(conn, who.tenant, uid) for uid in covered]
            else:
                watched = [self._visible(conn, who, decision, target_uid)]
                covered = []
            for uid in (target_uid, *covered):
                sql.subscribe(
                    conn,
                    who.tenant,
                    ae_title,
                    uid,
                    deletion_lock=deletion_lock,
                    filter_text=filter_text if uid == target_uid else None,
                    who=who.id,
                    now=now,
                )
            # The SCP sends each newly watched workitem's current state (PS3.4 CC.2.3.2).
            for row in watched:
                if row is not None:
                    report = state_report(row.uid, row.data)
                    events.enqueue(conn, who.tenant, row.uid, report, now, ae_title=ae_title)
            self._commit_record(conn, event)

        self.index.write(job)

    def unsubscribe(self, who: Principal, target_uid: str, ae_title: str) -> None:
        """Unsubscribe (PS3.18 11.11): from one workitem; from the worklist (either
        well-known UID), every subscription of the AE in the tenant (PS3.4 CC.2.3.1)."""
        decision = self._authorize_watch(who, target_uid, f"unsubscribe from {target_uid}")
        ae_title = check_ae_title(ae_title)
        event = self._watch_event(who, f"{ae_title} unsubscribed from {target_uid}", decision)

        def job(conn: Connection) -> None:
            if target_uid in _WORKLISTS:
                sql.unsubscribe(conn, who.tenant, ae_title)
                events.forget_ae(conn, who.tenant, ae_title)
            else:
                self._visible(conn, who, decision, target_uid)
                sql.unsubscribe(conn, who.tenant, ae_title, target_uid)
            self._commit_record(conn, event)

        self.index.write(job)

    def suspend(self, who: Principal, target_uid: str, ae_title: str) -> None:
        """Suspend Global Subscription (PS3.18 11.12): no subscription to workitems created
        from now on; those made so far stay. NotFound (404) when there is none."""
        decision = self._authorize_watch(who, target_uid, "suspend a worklist subscription")
        ae_title = check_ae_title(ae_title)
        if target_uid not in _WORKLISTS:
            raise BadRequest(
                f"only a worklist subscription ({wi.WORKLIST_UID} or "
                f"{wi.FILTERED_WORKLIST_UID}) can be suspended"
            )
        event = self._watch_event(who, f"{ae_title} suspended on {target_uid}", decision)

        def job(conn: Connection) -> None:
            if not sql.unsubscribe(conn, who.tenant, ae_title, target_uid):
                raise NotFound(f"{ae_title} has no subscription to {target_uid}")
            self._commit_record(conn, event)

        self.index.write(job)

    def subscriptions(self, who: Principal, target_uid: str | None = None) -> list[Subscription]:
        """The tenant's subscriptions (to ``target_uid`` only, when given)."""
        target = target_uid or wi.WORKLIST_UID
        decision = self._authorize_watch(who, target, "list workitem subscriptions")
        with self.index.reading() as conn:
            if target_uid is not None and target_uid not in _WORKLISTS:
                self._visible(conn, who, decision, target_uid)
            rows = sql.subscriptions(
                conn, who.tenant, targets=None if target_uid is None else (target_uid,)
            )
        return [Subscription(**vars(r)) for r in rows]

    # ------------------------------------------------------------------ helpers
    def _authorize(
        self, who: Principal, action: Action, what: str, data: Mapping[str, Any] | None = None
    ) -> Decision:
        patient = wi.text(data, wi.PATIENT_ID) if data is not None else None
        return self.guard.authorize(who, action, what, patient_id=patient)

    def _authorize_watch(self, who: Principal, target_uid: str, what: str) -> Decision:
        if target_uid not in _WORKLISTS and not is_usable(target_uid):
            raise BadRequest(f"the workitem UID ({len(target_uid)} characters) is not a valid UID")
        decision = self.guard.authorize(who, Action.READ, what)
        assert decision.scope is not None
        if target_uid in _WORKLISTS and decision.scope.grantee is not None:
            reason = f"{who.id} sees granted workitems only and may not watch the whole worklist"
            self.guard.record(
                audit_events.access_refused(who, f"{what}: {reason}", request_id=who.request_id)
            )
            raise Forbidden(reason)
        return decision

    def _found(self, conn: Connection, who: Principal, uid: str) -> sql.WorkitemRow:
        row = sql.find(conn, who.tenant, uid, lock=True)
        if row is None:
            raise NotFound(f"no workitem {uid}")
        return row

    def _visible(
        self, conn: Connection, who: Principal, decision: Decision, uid: str
    ) -> sql.WorkitemRow:
        """The workitem if it is in the caller's scope; NotFound as for one that is absent."""
        assert decision.scope is not None
        row = sql.find(conn, decision.scope.partition, uid)
        grantee = decision.scope.grantee
        if row is None or (grantee and not sql.visible(conn, who.tenant, grantee, uid)):
            raise NotFound(f"no workitem {uid}")
        return row

    def _covers(
        self, conn: Connection, partition: str, subscription: sql.SubscriptionRow, uid: str
    ) -> bool:
        if subscription.target_uid == wi.WORKLIST_UID:
            return True
        query = parse_filter(subscription.filter or "")
        return bool(sql.matching_uids(conn, partition, query, only=uid))

    def _event(
        self,
        who: Principal,
        action: EventAction,
        data: Mapping[str, Any],
        description: str,
        decision: Decision,
        outcome: EventOutcome = EventOutcome.SUCCESS,
    ) -> AuditEvent:
        study = wi.text(data, wi.STUDY_UID)
        return audit_events.procedure_record(
            who,
            action=action,
            patient_id=wi.text(data, wi.PATIENT_ID),
            study_uids=[study] if study and is_usable(study) else [],
            outcome=outcome,
            request_id=who.request_id,
            break_glass_reason=decision.break_glass,
            description=description,
        )

    def _watch_event(self, who: Principal, description: str, decision: Decision) -> AuditEvent:
        return audit_events.procedure_record(
            who,
            action=EventAction.EXECUTE,
            request_id=who.request_id,
            break_glass_reason=decision.break_glass,
            description=description,
        )

    def _commit_record(self, conn: Connection, event: AuditEvent) -> None:
        record = self.guard.record_job(event)
        if record is not None:
            record(conn)

    def _write_audited(
        self, who: Principal, uid: str, verb: str, job: Callable[[Connection], T]
    ) -> T:
        """Run ``job``; a refusal by the workitem's state is recorded too (minor failure)."""
        try:
            return self.index.write(job)
        except WorkitemRefused as refused:
            self.guard.record(
                audit_events.procedure_record(
                    who,
                    action=EventAction.UPDATE,
                    outcome=EventOutcome.MINOR_FAILURE,
                    request_id=who.request_id,
                    description=f"{verb} workitem {uid} refused: 0x{refused.dimse_status:04X}",
                )
            )
            raise
