"""The audit log: ``/ui/admin/audit``, its chain's state and a search, newest first, paged.

For auditors and admins of the home tenant (Action.AUDIT), as ``GET /audit/records``; every
listing goes through nubis.services.audit_log and so through ``AuditTrail.read``, which records
it (Audit Log Used) before anything is shown. The search form is POSTed, and pages after the
first are POSTs as well: a Patient ID typed into a filter never lands in a URL, where access
logs and browser history would keep it.

The chain's state costs two indexed reads (its head, its last signed checkpoint); a full
verification walks every record, so it runs as an ``audit-verify`` job whose progress the page
follows and whose report it shows: ok or broken (the first bad record and why), records,
signed checkpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.model.audit import EventID, EventOutcome
from nubis.security.audit import AuditRecord
from nubis.web.ui.admin.common import admin_page, call, redirect
from nubis.web.ui.admin.jobs import job_json
from nubis.web.ui.common import archive_of, field, signed_in, ui_form

PAGE = 50
EVENTS = [(c.code, c.display) for c in vars(EventID).values() if hasattr(c, "code")]
_EVENT_CODES = {code for code, _ in EVENTS}
_OUTCOMES = {0: ("success", "ok"), 4: ("minor failure", "warn"), 8: ("serious failure", "bad"),
             12: ("major failure", "bad")}  # fmt: skip
_ACTIONS = {"C": "create", "R": "read", "U": "update", "D": "delete", "E": "execute"}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Filters:
    user: str = ""
    patient: str = ""
    event: str = ""
    since: str = ""  # YYYY-MM-DD, UTC, included
    until: str = ""  # YYYY-MM-DD, UTC, included

    @property
    def any(self) -> bool:
        return any((self.user, self.patient, self.event, self.since, self.until))

    def query(self) -> dict[str, Any]:
        """The filters as AuditTrail.read takes them; ``until`` names a whole day."""
        until = None
        if self.until:
            until = (date.fromisoformat(self.until) + timedelta(days=1)).isoformat()
        return {
            "user_id": self.user or None,
            "patient_id": self.patient or None,
            "event_code": self.event or None,
            "since": self.since or None,
            "until": until,
        }


def _day(form: FormData, name: str) -> str:
    text = field(form, name, max_length=10, required=False)
    if not text:
        return ""
    try:
        if not _DATE.fullmatch(text):
            raise ValueError
        date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name} is a date YYYY-MM-DD") from None
    return text


def _filters(form: FormData) -> Filters:
    event = field(form, "event", max_length=16, required=False)
    if event and event not in _EVENT_CODES:
        raise BadRequest("event is one of the audit event codes of PS3.15 A.5.3")
    return Filters(
        user=field(form, "user", max_length=256, required=False),
        patient=field(form, "patient", max_length=64, required=False),
        event=event,
        since=_day(form, "since"),
        until=_day(form, "until"),
    )


def _row(record: AuditRecord) -> dict[str, Any]:
    """What the table shows of a record."""
    event = record.event_dict
    participants = event.get("participants", [])
    who = next(
        (p for p in participants if p.get("requestor")), participants[0] if participants else {}
    )
    objects = event.get("objects", [])
    patients = [o["id"] for o in objects if o.get("role") == 1]
    studies = [o["id"] for o in objects if o.get("id_type", {}).get("code") == "110180"]
    others = [o.get("name") or o["id"] for o in objects if o.get("role") not in (1, 3, 24)]
    outcome, tone = _OUTCOMES.get(int(event.get("outcome", 0)), ("?", "warn"))
    types = ", ".join(t.get("display") or t.get("code", "") for t in event.get("event_types", []))
    return {
        "seq": record.seq,
        "at": str(event.get("at", "")).replace("T", " ").removesuffix("Z")[:19],
        "event": event.get("event_id", {}).get("display", ""),
        "types": types,
        "action": _ACTIONS.get(str(event.get("action")), str(event.get("action", ""))),
        "outcome": outcome,
        "tone": tone,
        "user": who.get("user_id", ""),
        "from": who.get("network_access_point", ""),
        "via": event.get("front_door", ""),
        "patients": patients,
        "studies": studies,
        "others": others,
        "description": event.get("outcome_description", ""),
        "break_glass": event.get("break_glass_reason", ""),
    }


async def _page(
    request: Request, filters: Filters, *, before: int | None = None, notice: str | None = None
) -> Response:
    principal = signed_in(request)
    audit_log = archive_of(request).audit_log
    status = await call(audit_log.status, principal)
    records = await call(
        audit_log.search, principal, before_seq=before, limit=PAGE, **filters.query()
    )
    verification = status.verification
    return admin_page(
        request,
        "admin/audit.html",
        {
            "status": status,
            "verification": verification,
            "report": verification.result if verification and verification.result else None,
            "rows": [_row(r) for r in records],
            "older": records[-1].seq if len(records) == PAGE else None,
            "filters": filters,
            "events": EVENTS,
            "before": before,
            "outcome_failure": int(EventOutcome.MINOR_FAILURE),
            "notice": notice,
        },
        section="audit",
    )


async def audit(request: Request) -> Response:
    notice = None
    if request.query_params.get("done") == "verify":
        notice = "Verification queued: the whole chain is read, signatures checked."
    return await _page(request, Filters(), notice=notice)


async def search(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    await call(archive_of(request).audit_log.authorize, principal, "read the audit log")
    before_text = field(form, "before", max_length=18, required=False)
    if before_text and not before_text.isdigit():
        raise BadRequest("before is a record's sequence number")
    return await _page(request, _filters(form), before=int(before_text) if before_text else None)


async def verify(request: Request) -> Response:
    principal = signed_in(request)
    await ui_form(request)
    await call(archive_of(request).audit_log.verify, principal)
    return redirect("/ui/admin/audit?done=verify")


async def verification(request: Request) -> Response:
    """``GET /ui/admin/audit/verification``: the latest verification job, as JSON (the page
    polls it as the jobs page polls its jobs)."""
    principal = signed_in(request)
    status = await call(archive_of(request).audit_log.status, principal)
    jobs = [status.verification] if status.verification is not None else []
    return JSONResponse({"jobs": [job_json(j) for j in jobs]})


def routes() -> list[Route]:
    return [
        Route("/ui/admin/audit", audit, methods=["GET"]),
        Route("/ui/admin/audit", search, methods=["POST"]),
        Route("/ui/admin/audit/verify", verify, methods=["POST"]),
        Route("/ui/admin/audit/verification", verification, methods=["GET"]),
    ]


__all__ = ["routes"]
