"""The audit trail over HTTP, for the auditor role: ``GET /audit/records`` and ``/audit/verify``.

``GET /audit/records?since=&until=&user=&patient=&event=&after=&limit=`` answers records in the
stored form, oldest first::

    {"records": [{"seq": 41, "prev_hash": "...", "hash": "...", "event": {...}}, ...],
     "next_after": 41}

``event`` is the content that was hashed (nubis.model.audit ``AuditEvent.to_dict``: the fields
of the DICOM audit message, PS3.15 A.5.1), so a client can recompute the chain by itself:
``hash`` is SHA-256 of the sorted, compact JSON ``{"event", "prev": prev_hash, "seq", "v": 1}``
(nubis.security.audit ``canonical_record``), and each record's ``prev_hash`` is the hash
before it. This form, not FHIR AuditEvent, because it is what the chain and the signatures
cover; ``nubis audit export --format fhir`` converts. ``next_after`` is the ``after`` for the
next page, or null when this page was the last. ``since``/``until`` are UTC times
(``YYYY-MM-DD[THH:MM[:SS[.fff]]]``, ``Z`` allowed; ``until`` excluded), ``user`` a requestor's
user id, ``patient`` a Patient ID, ``event`` an EventID code (110103...); ``limit`` 1-1000,
default 100.

``GET /audit/verify`` checks the whole chain and every signed checkpoint with the archive's
own key and answers the report (``ok``, ``records``, ``checkpoints``, ``last_signed_seq``,
``unsigned``, ``first_bad_seq``, ``problem``), 200 either way: a tampered trail is a finding,
not a failed request. A check against a public key kept elsewhere is ``nubis audit verify
--public-key``.

Both need the AUDIT action (auditor and admin roles) in the home tenant (nubis.security.policy:
records name patients and users of every tenant). Both are themselves recorded as Audit Log
Used (PS3.15 A.5.3.1) before anything is answered, by the trail (fail closed: 503 when that
record cannot be written); a refusal is recorded as Use of Restricted Function.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.archive import Archive
from nubis.errors import BadRequest
from nubis.security.policy import Action, Principal
from nubis.web.dicomweb.common import principal_of

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_PARAMS = frozenset({"since", "until", "user", "patient", "event", "after", "limit"})
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?Z?")
_EVENT_CODE = re.compile(r"[0-9A-Za-z.\-]{1,64}")


def audit_routes() -> list[Route]:
    return [
        Route("/audit/records", records, methods=["GET"]),
        Route("/audit/verify", verify, methods=["GET"]),
    ]


def _auditor(request: Request, what: str) -> tuple[Archive, Principal]:
    """The archive and the caller, once the policy let the caller use the audit log."""
    archive: Archive = request.app.state.archive
    # Not a DICOMweb request: records say it came through the archive's own web API.
    principal = replace(principal_of(request), via="web")
    archive.guard.authorize(principal, Action.AUDIT, what)
    return archive, principal


async def records(request: Request) -> Response:
    """``GET /audit/records``: filtered records, a page at a time (see the module docs)."""

    def read() -> dict[str, Any]:
        # Authorized before the parameters are looked at: a refusal says nothing else.
        archive, principal = _auditor(request, "read the audit log")
        after, limit, filters = _filters(request)
        found = archive.audit.read(
            principal,
            front_door="web",
            request_id=principal.request_id,
            after_seq=after,
            limit=limit,
            **filters,
        )
        page = [
            {"seq": r.seq, "prev_hash": r.prev_hash, "hash": r.hash, "event": r.event_dict}
            for r in found
        ]
        return {"records": page, "next_after": page[-1]["seq"] if len(page) == limit else None}

    return JSONResponse(await run_in_threadpool(read), headers={"cache-control": "no-store"})


def _filters(request: Request) -> tuple[int, int, dict[str, Any]]:
    """``after``, ``limit`` and the filters of :meth:`AuditTrail.read`; BadRequest names what
    is wrong."""
    params = request.query_params
    unknown = sorted(set(params) - _PARAMS)
    if unknown:
        raise BadRequest(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(_PARAMS))}"
        )
    for name in sorted(_PARAMS):
        if len(params.getlist(name)) > 1:
            raise BadRequest(f"parameter {name} given more than once")
    after = _integer(params.get("after"), "after", 0, minimum=0)
    limit = _integer(params.get("limit"), "limit", DEFAULT_LIMIT, minimum=1)
    if limit > MAX_LIMIT:
        raise BadRequest(f"limit is at most {MAX_LIMIT}")
    event = params.get("event")
    if event is not None and not _EVENT_CODE.fullmatch(event):
        raise BadRequest("event is an EventID code, e.g. 110103")
    return (
        after,
        limit,
        {
            "user_id": params.get("user"),
            "patient_id": params.get("patient"),
            "event_code": event,
            "since": _utc(params.get("since"), "since"),
            "until": _utc(params.get("until"), "until"),
        },
    )


async def verify(request: Request) -> Response:
    """``GET /audit/verify``: the verification report (see the module docs)."""

    def check() -> dict[str, Any]:
        archive, principal = _auditor(request, "verify the audit log")
        report = archive.audit.verify(used_by=principal, front_door="web")
        return {
            "ok": report.ok,
            "records": report.records,
            "checkpoints": report.checkpoints,
            "last_signed_seq": report.last_signed_seq,
            "unsigned": report.unsigned,
            "first_bad_seq": report.first_bad_seq,
            "problem": report.problem,
        }

    return JSONResponse(await run_in_threadpool(check), headers={"cache-control": "no-store"})


def _integer(text: str | None, name: str, default: int, *, minimum: int) -> int:
    if text is None:
        return default
    # At most 18 digits: every value fits the index's 64-bit integers.
    if not (text.isascii() and text.isdigit() and len(text) <= 18) or int(text) < minimum:
        raise BadRequest(f"{name} must be an integer of at least {minimum} (18 digits at most)")
    return int(text)


def _utc(text: str | None, name: str) -> str | None:
    """A time prefix comparable with the stored ``YYYY-MM-DDTHH:MM:SS.fffZ`` (UTC) values."""
    if text is None:
        return None
    if not _TIME.fullmatch(text):
        raise BadRequest(f"{name} must be a UTC time YYYY-MM-DD[THH:MM[:SS[.fff]]][Z]")
    # A trailing Z would sort after the stored ".fffZ" of the same second and skip it.
    bare = text.removesuffix("Z")
    try:
        datetime.fromisoformat(bare)
    except ValueError:
        raise BadRequest(f"{name} is not a valid time: {text}") from None
    return bare


__all__ = ["audit_routes", "records", "verify"]
