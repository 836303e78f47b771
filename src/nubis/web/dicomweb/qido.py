"""QIDO-RS (PS3.18 10.6): search studies, series and instances, nested or not.

Parsing and matching live in model/query.py and index/query_sql.py, shared with C-FIND; this
route adds the RetrieveURL of each match (PS3.18 Table 10.6.3-3..5) and the Warning header of
PS3.18 8.3.4.4 when the server capped the page.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from nubis.model.query import Level, parse_qido
from nubis.web.dicomweb.accept import Offer, negotiate
from nubis.web.dicomweb.common import (
    accept_ranges,
    archive_of,
    dicomweb_base,
    optional_path_uid,
    principal_of,
)

_OFFERS = (Offer("application/dicom+json", aliases=("application/json",)),)
_STUDY, _SERIES, _SOP = "0020000D", "0020000E", "00080018"
_MODALITIES_IN_STUDY = "00080061"


def _uid_of(item: dict[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    values = element.get("Value") if element else None
    return str(values[0]) if values else None


def retrieve_url(level: Level, item: dict[str, Any], base: str) -> str | None:
    study = _uid_of(item, _STUDY)
    if study is None:
        return None
    if level is Level.STUDY:
        return f"{base}/studies/{study}"
    series = _uid_of(item, _SERIES)
    if series is None:
        return None
    if level is Level.SERIES:
        return f"{base}/studies/{study}/series/{series}"
    sop = _uid_of(item, _SOP)
    return f"{base}/studies/{study}/series/{series}/instances/{sop}" if sop else None


def _drop_empty_aggregate(level: Level, item: dict[str, Any]) -> None:
    """Modalities in Study is left out of a study's result when none of its series has a
    Modality (objects that lack the Type 1 attribute): the archive computes it, and an empty one
    makes OHIF 3 (up to at least 3.13) fail its whole study list, reading the absent "Value"
    (PS3.18 F.2.5) of a multi-valued aggregate. C-FIND still returns it zero-length."""
    element = item.get(_MODALITIES_IN_STUDY)
    if level is Level.STUDY and element is not None and "Value" not in element:
        del item[_MODALITIES_IN_STUDY]


def search(level: Level) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        archive = archive_of(request)
        choice = negotiate(accept_ranges(request), _OFFERS)
        settings = archive.settings
        query = parse_qido(
            level,
            list(request.query_params.multi_items()),
            study_uid=optional_path_uid(request, "study"),
            series_uid=optional_path_uid(request, "series"),
            max_limit=settings.qido_max_limit,
            default_limit=settings.qido_default_limit,
        )
        page = await run_in_threadpool(
            partial(archive.query.search, text=request.url.query),
            principal_of(request),
            query,
        )
        base = dicomweb_base(request)
        for item in page.items:
            _drop_empty_aggregate(level, item)
            url = retrieve_url(level, item, base)
            if url:
                item["00081190"] = {"vr": "UR", "Value": [url]}
        response = Response(
            json.dumps(page.items, separators=(",", ":")), media_type=choice.media_type
        )
        for warning in query.warnings:
            response.headers.append("warning", f'299 nubis "{warning}"')
        if page.more:
            response.headers.append(
                "warning",
                '299 nubis "The number of results exceeded the maximum supported by the server. '
                'Additional results can be requested."',
            )
        return response

    return endpoint
