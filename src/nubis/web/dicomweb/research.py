"""The researcher's DICOMweb: ``/projects/{project}/dicom-web/...`` (docs/research.md).

The same resources as ``/dicom-web`` for reading (QIDO-RS, metadata, instances, frames,
rendered, thumbnails; not bulk data), each
answered by ``services.research_view`` with the project's de-identified view; the UIDs in the
path are the remapped ones the view hands out. The project is in the path rather than a header
so that any DICOMweb client (a viewer, dicomweb-client, OHIF) takes the project's root as its
base URL and needs nothing else. Routes only translate HTTP to the service.

The same routes answer at ``/share/dicom-web`` (``SHARE_PREFIX``) for a de-identified share
link's session: no project in the path, the view opens the session's link.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.errors import BadRequest
from nubis.model.query import Level
from nubis.services.research import check_name
from nubis.web.dicomweb.accept import (
    ANY_TRANSFER_SYNTAX,
    EXPLICIT_VR_LITTLE_ENDIAN,
    Offer,
    frame_offers,
    instance_offers,
    metadata_offers,
    negotiate,
)
from nubis.web.dicomweb.common import (
    accept_ranges,
    answer,
    archive_of,
    next_batch,
    optional_path_uid,
    path_uid,
    principal_of,
)
from nubis.web.dicomweb.multipart import (
    iter_multipart,
    multipart_related_content_type,
    new_boundary,
)
from nubis.web.dicomweb.qido import retrieve_url
from nubis.web.dicomweb.wado import frame_numbers, render_options
from nubis.web.urls import site_url

_QIDO_OFFERS = (Offer("application/dicom+json", aliases=("application/json",)),)
# Objects go as the profile leaves them (as stored, or Explicit VR Little Endian where it
# blanked pixels); frames decoded (also for transfer-syntax=*: the server chooses).
_INSTANCE_OFFERS = instance_offers((EXPLICIT_VR_LITTLE_ENDIAN,), as_stored=True)
_FRAME_OFFERS = frame_offers((), as_stored=True)

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
PREFIX = "/projects/{project}/dicom-web"
SHARE_PREFIX = "/share/dicom-web"


def _project(request: Request) -> str | None:
    """The project the path names; None under the de-identified share link's root."""
    if "project" not in request.path_params:
        return None
    return check_name(str(request.path_params["project"]))


def _base(request: Request, project: str | None) -> str:
    if project is None:
        return f"{site_url(request)}{SHARE_PREFIX}"
    return f"{site_url(request)}/projects/{project}/dicom-web"


def search(level: Level) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        archive = archive_of(request)
        project = _project(request)
        choice = negotiate(accept_ranges(request), _QIDO_OFFERS)
        settings = archive.settings
        items, more, warnings = await run_in_threadpool(
            partial(
                archive.research_view.search,
                principal_of(request),
                project,
                level,
                list(request.query_params.multi_items()),
                study_uid=optional_path_uid(request, "study"),
                series_uid=optional_path_uid(request, "series"),
                max_limit=settings.qido_max_limit,
                default_limit=settings.qido_default_limit,
                # The path names the project (and the remapped study) for the record.
                text=f"{request.url.path}?{request.url.query}",
            )
        )
        base = _base(request, project)
        for item in items:
            url = retrieve_url(level, item, base)
            if url:
                item["00081190"] = {"vr": "UR", "Value": [url]}
        response = Response(json.dumps(items, separators=(",", ":")), media_type=choice.media_type)
        for warning in warnings:
            response.headers.append("warning", f'299 nubis "{warning}"')
        if more:
            response.headers.append(
                "warning",
                '299 nubis "The number of results exceeded the maximum supported by the server. '
                'Additional results can be requested."',
            )
        return response

    return endpoint


def _scope(request: Request) -> tuple[str, str | None, str | None]:
    return (
        path_uid(request, "study"),
        optional_path_uid(request, "series"),
        optional_path_uid(request, "instance"),
    )


async def retrieve_metadata(request: Request) -> Response:
    archive = archive_of(request)
    choice = negotiate(accept_ranges(request), metadata_offers())
    body: list[dict[str, Any]] = await run_in_threadpool(
        archive.research_view.metadata, principal_of(request), _project(request), *_scope(request)
    )
    return Response(json.dumps(body, separators=(",", ":")), media_type=choice.media_type)


async def retrieve_instances(request: Request) -> Response:
    """De-identified Part-10 objects in Explicit VR Little Endian (PS3.18 8.7.3.5.2's
    default), or with ``transfer-syntax=*`` as the profile leaves them (as stored, or
    Explicit VR Little Endian where pixels were blanked)."""
    archive = archive_of(request)
    choice = negotiate(accept_ranges(request), _INSTANCE_OFFERS)
    as_stored = choice.transfer_syntax == ANY_TRANSFER_SYNTAX
    who, project = principal_of(request), _project(request)
    boundary = new_boundary()

    def open_first() -> tuple[Iterator[bytes], list[bytes]]:
        files = archive.research_view.instances(
            who, project, *_scope(request), native=not as_stored
        )
        parts = (({"Content-Type": "application/dicom"}, iter((f.data,))) for f in files)
        stream = iter_multipart(parts, boundary)
        return stream, next_batch(stream)

    stream, first = await run_in_threadpool(open_first)
    syntax = None if as_stored else EXPLICIT_VR_LITTLE_ENDIAN
    return answer(
        stream, first, multipart_related_content_type(boundary, "application/dicom", syntax)
    )


async def retrieve_frames(request: Request) -> Response:
    """Decoded frames (application/octet-stream) of an object whose pixels the profile
    leaves as stored."""
    archive = archive_of(request)
    numbers = frame_numbers(request.path_params["frames"])
    negotiate(accept_ranges(request), _FRAME_OFFERS)
    who, project = principal_of(request), _project(request)
    study, series, sop = _scope(request)
    assert series is not None and sop is not None
    boundary = new_boundary()
    syntax = "1.2.840.10008.1.2.1"

    def open_first() -> tuple[Iterator[bytes], list[bytes]]:
        frames = archive.research_view.frames(who, project, study, series, sop, numbers)
        part_ct = f"application/octet-stream; transfer-syntax={syntax}"
        stream = iter_multipart((({"Content-Type": part_ct}, body) for body in frames), boundary)
        return stream, next_batch(stream)

    stream, first = await run_in_threadpool(open_first)
    content_type = multipart_related_content_type(boundary, "application/octet-stream", syntax)
    return answer(stream, first, content_type)


async def retrieve_rendered(request: Request) -> Response:
    """A rendered instance or frame (PS3.18 10.4.1.1.3) of an object whose pixels the profile
    leaves as stored."""
    archive = archive_of(request)
    options = render_options(request)
    study, series, sop = _scope(request)
    assert series is not None and sop is not None
    number = None
    if "frames" in request.path_params:
        numbers = frame_numbers(request.path_params["frames"])
        if len(numbers) != 1:
            raise BadRequest("a rendered frame request names exactly one frame")
        number = numbers[0]
    body = await run_in_threadpool(
        archive.research_view.rendered,
        principal_of(request),
        _project(request),
        study,
        series,
        sop,
        number,
        options,
    )
    return Response(body, media_type=options.media_type)


async def retrieve_thumbnail(request: Request) -> Response:
    """A thumbnail of a study, series, instance or frame (its middle instance's)."""
    archive = archive_of(request)
    options = render_options(request, thumbnail=True)
    number = None
    if "frames" in request.path_params:
        number = frame_numbers(request.path_params["frames"])[0]
    body = await run_in_threadpool(
        archive.research_view.thumbnail,
        principal_of(request),
        _project(request),
        *_scope(request),
        number,
        options,
    )
    return Response(body, media_type=options.media_type)


def research_routes() -> list[Route]:
    """The reading resources of PS3.18 Table 10.1-1 under a project's root."""
    routes = [
        Route("/studies", search(Level.STUDY), methods=["GET"]),
        Route("/series", search(Level.SERIES), methods=["GET"]),
        Route("/instances", search(Level.INSTANCE), methods=["GET"]),
        Route(_STUDY + "/series", search(Level.SERIES), methods=["GET"]),
        Route(_STUDY + "/instances", search(Level.INSTANCE), methods=["GET"]),
        Route(_SERIES + "/instances", search(Level.INSTANCE), methods=["GET"]),
    ]
    for resource in (_STUDY, _SERIES, _INSTANCE):
        routes += [
            Route(resource, retrieve_instances, methods=["GET"]),
            Route(resource + "/metadata", retrieve_metadata, methods=["GET"]),
            Route(resource + "/thumbnail", retrieve_thumbnail, methods=["GET"]),
        ]
    routes += [
        Route(_INSTANCE + "/frames/{frames}", retrieve_frames, methods=["GET"]),
        Route(_INSTANCE + "/rendered", retrieve_rendered, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/rendered", retrieve_rendered, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/thumbnail", retrieve_thumbnail, methods=["GET"]),
    ]
    return routes
