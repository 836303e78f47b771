"""The admin pages of the web face, under ``/ui/admin/``: users and API keys, jobs with live
progress, storage per tier and its cost drawn as charts, the audit log and its chain, the DIMSE
peers. Each page calls the services the CLI calls; the Guard there authorizes and records.
"""

from __future__ import annotations

from starlette.routing import Route

from nubis.web.ui.admin import audit, jobs, overview, peers, storage, users


def routes() -> list[Route]:
    return [
        *overview.routes(),
        *users.routes(),
        *jobs.routes(),
        *storage.routes(),
        *audit.routes(),
        *peers.routes(),
    ]


__all__ = ["routes"]
