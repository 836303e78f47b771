"""Federated statistics over HTTP: ``GET /research/aggregate?kind=KIND&<filter>``.

``kind`` names one of the declared aggregate kinds (nubis.model.aggregates.KINDS); every other
parameter is a QIDO-RS matching key at the instance level (``Modality=CT``,
``StudyDate=20200101-20231231``), narrowing what is counted. The answer is JSON: the kind, its
dimensions, ``k``, the cells (``{"key": [...], "count": 12}`` or ``"count": "<10"``) and the
total of the unsuppressed cells. Allowed to admins and researchers in their own tenant
(Action.AGGREGATE), recorded as a Query before it is answered; ``nubis research aggregate``
asks several sites this and pools their answers.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nubis.archive import Archive
from nubis.web.dicomweb.common import principal_of

__all__ = ["research_routes"]


def research_routes() -> list[Route]:
    return [Route("/research/aggregate", aggregate, methods=["GET"])]


async def aggregate(request: Request) -> Response:
    def answer() -> dict[str, Any]:
        archive: Archive = request.app.state.archive
        # Not a DICOMweb request: records say it came through the archive's own web API.
        principal = replace(principal_of(request), via="web")
        params = list(request.query_params.multi_items())
        kinds = [value for name, value in params if name == "kind"]
        filters = [(name, value) for name, value in params if name != "kind"]
        # No kind or several: the service refuses it as unknown, after authorizing the caller.
        return archive.aggregates.answer(principal, kinds[0] if len(kinds) == 1 else "", filters)

    return JSONResponse(await run_in_threadpool(answer), headers={"cache-control": "no-store"})
