"""``/ui/admin/``: the archive at a glance, each card linking to its page.

An admin of another tenant sees its users only; an admin of the home tenant also sees jobs,
storage and cost, the audit trail's state and the DIMSE peers, each read through the service
that authorizes it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.jobs.store import JobState
from nubis.web.ui.admin.common import admin_page, call, may
from nubis.web.ui.common import archive_of, signed_in


async def overview(request: Request) -> Response:
    principal = signed_in(request)
    archive = archive_of(request)
    users = await call(archive.accounts.list_users, principal)
    context: dict[str, Any] = {
        "users": len(users),
        "tenants": len({u.tenant for u in users}),
        "jobs": None,
        "storage": None,
        "audit": None,
        "peers": None,
        "running": [],
    }
    allowed = may(request, principal)
    if allowed["can_operate"]:
        ops = archive.operations
        context["jobs"] = await call(ops.job_counts, principal)
        context["running"] = await call(
            ops.jobs, principal, states=[JobState.RUNNING, JobState.QUEUED], limit=5
        )
        context["storage_day"], context["storage"] = await call(ops.storage_at_a_glance, principal)
        context["peers"] = len(await call(ops.peers, principal))
    if allowed["can_audit"]:
        context["audit"] = await call(archive.audit_log.status, principal)
    return admin_page(request, "admin/overview.html", context, section="overview")


def routes() -> list[Route]:
    return [Route("/ui/admin/", overview, methods=["GET"])]


__all__ = ["routes"]
