"""Background jobs: ``/ui/admin/jobs`` (list by state and kind, run, cancel) with live progress.

The page is plain HTML; ``static/admin-jobs.js`` polls ``/ui/admin/jobs/progress?ids=...``
(JSON, the same service call) about once a second while a listed job is queued or running,
and moves its ``<progress>`` bar. Jobs are the archive's, not a tenant's: admins of the home
tenant only (Action.OPERATE, nubis.services.operations), like ``nubis jobs``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.jobs.kinds import KINDS, parse_params
from nubis.jobs.store import Job, JobState
from nubis.services.operations import MAX_JOBS_LISTED, RUNNABLE_KINDS
from nubis.web.ui.admin.common import admin_page, call, integer, redirect
from nubis.web.ui.common import archive_of, field, signed_in, ui_form

# Kinds a listing may be narrowed to: those of nubis jobs run, and what the DIMSE server queues.
_LISTED_KINDS = (*KINDS, "commitment-report")
_MAX_IDS = 100


def job_json(job: Job) -> dict[str, Any]:
    """A job as the progress poller reads it."""
    note = job.last_error or ""
    if job.cancel_requested and not job.state.finished:
        note = "cancel requested"
    return {
        "id": job.id,
        "kind": job.kind,
        "state": job.state.value,
        "finished": job.state.finished,
        "done": job.progress_done,
        "total": job.progress_total,
        "fraction": job.fraction,
        "note": note[:200],
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _notice(request: Request) -> str | None:
    params = request.query_params
    job = params.get("job", "")
    if not job.isdigit():
        return None
    return {
        "queued": f"Job {job} queued; the first free node runs it.",
        "cancelled": f"Job {job} cancelled.",
        "stopping": f"Job {job} is running: it was asked to stop.",
        "ended": f"Job {job} had already ended.",
    }.get(params.get("done", ""))


async def list_jobs(request: Request) -> Response:
    principal = signed_in(request)
    params = request.query_params
    state = params.get("state", "")
    kind = params.get("kind", "")
    states = [JobState(state)] if state in {s.value for s in JobState} else []
    kind = kind if kind in _LISTED_KINDS else ""
    limit = integer(params.get("limit"), "limit", 50, 1, MAX_JOBS_LISTED)
    jobs = await call(
        archive_of(request).operations.jobs, principal, states=states, kind=kind, limit=limit
    )
    return admin_page(
        request,
        "admin/jobs.html",
        {
            "jobs": jobs,
            "state": state if states else "",
            "kind": kind,
            "limit": limit,
            "states": [s.value for s in JobState],
            "kinds": _LISTED_KINDS,
            "runnable": RUNNABLE_KINDS,
            "notice": _notice(request),
        },
        section="jobs",
    )


async def progress(request: Request) -> Response:
    """``GET /ui/admin/jobs/progress?ids=1,2,3``: those jobs now, as JSON."""
    principal = signed_in(request)
    text = request.query_params.get("ids", "")
    parts = [p for p in text.split(",") if p]
    if len(parts) > _MAX_IDS or not all(p.isdigit() and len(p) <= 18 for p in parts):
        raise BadRequest(f"ids is a comma-separated list of at most {_MAX_IDS} job ids")
    jobs = await call(archive_of(request).operations.jobs_by_id, principal, [int(p) for p in parts])
    return JSONResponse({"jobs": [job_json(j) for j in jobs]})


async def run_job(request: Request) -> Response:
    principal = signed_in(request)
    form = await ui_form(request)
    await call(archive_of(request).operations.authorize, principal, "run a job")
    kind = field(form, "kind", max_length=32)
    text = field(form, "params", max_length=1000, required=False)
    try:
        params = parse_params([p.strip() for p in text.replace("\n", ",").split(",") if p.strip()])
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    job_id = await call(archive_of(request).operations.run_job, principal, kind, params)
    return redirect(f"/ui/admin/jobs?done=queued&job={job_id}")


async def cancel_job(request: Request) -> Response:
    principal = signed_in(request)
    await ui_form(request)
    job_id = request.path_params["job_id"]
    state = await call(archive_of(request).operations.cancel_job, principal, job_id)
    done = {JobState.QUEUED: "cancelled", JobState.RUNNING: "stopping"}.get(state, "ended")
    return redirect(f"/ui/admin/jobs?done={done}&job={job_id}")


def routes() -> list[Route]:
    return [
        Route("/ui/admin/jobs", list_jobs, methods=["GET"]),
        Route("/ui/admin/jobs", run_job, methods=["POST"]),
        Route("/ui/admin/jobs/progress", progress, methods=["GET"]),
        Route("/ui/admin/jobs/{job_id:int}/cancel", cancel_job, methods=["POST"]),
    ]


__all__ = ["job_json", "routes"]
