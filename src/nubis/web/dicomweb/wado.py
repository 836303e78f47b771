"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered, thumbnails; DELETE.

Routes only translate HTTP to service calls: negotiation of the representation (PS3.18 8.7),
streaming of multipart/related bodies (PS3.18 8.6.1.3), and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from nubis.dicom import render, syntaxes
from nubis.errors import BadRequest, NotAcceptable
from nubis.model.records import StoredInstance
from nubis.web.dicomweb.accept import (
    ANY_TRANSFER_SYNTAX,
    EXPLICIT_VR_LITTLE_ENDIAN,
    FRAME_MEDIA_TYPES,
    Offer,
    frame_offers,
    instance_offers,
    metadata_offers,
    negotiate,
    rendered_offers,
)
from nubis.web.dicomweb.byte_ranges import single_byte_range
from nubis.web.dicomweb.common import (
    accept_ranges,
    answer,
    archive_of,
    dicomweb_base,
    in_batches,
    next_batch,
    optional_path_uid,
    path_uid,
    principal_of,
)
from nubis.web.dicomweb.multipart import (
    iter_multipart,
    multipart_length,
    multipart_related_content_type,
    new_boundary,
)

DEFLATED = "1.2.840.10008.1.2.1.99"
NATIVE_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
_MEDIA_TYPE_OF_SYNTAX = {uid: mt for mt, uids in FRAME_MEDIA_TYPES.items() for uid in uids}
# A frame number has at most 10 digits (Number of Frames is an IS, PS3.5 Table 6.2-1).
_FRAME_LIST = re.compile(r"[0-9]{1,10}(,[0-9]{1,10})*")
# Every frame of a 4,096-frame object fits (19,372 characters); longer lists are refused.
_MAX_FRAME_LIST_CHARS = 20000


def _scope(request: Request) -> tuple[str, str | None, str | None]:
    return (
        path_uid(request, "study"),
        optional_path_uid(request, "series"),
        optional_path_uid(request, "instance"),
    )


# ---------------------------------------------------------------------- instances
async def retrieve_instances(request: Request) -> Response:
    """Study, series or instance as multipart/related application/dicom (PS3.18 10.4.1.1.1)."""
    archive = archive_of(request)
    study, series, sop = _scope(request)
    choice = negotiate(accept_ranges(request), instance_offers(sorted(syntaxes.SUPPORTED_TARGETS)))
    target = choice.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
    who = principal_of(request)
    boundary = new_boundary()

    def open_first() -> tuple[Iterator[bytes], list[bytes], int | None]:
        # One trip to the thread pool finds the instances, opens them and reads the first
        # batch: a one-instance answer is then ready when the trip returns.
        found = archive.retrieve.instances(who, study, series, sop)
        if target != ANY_TRANSFER_SYNTAX:
            for inst in found:
                if inst.transfer_syntax_uid != target and not syntaxes.can_transcode(
                    inst.transfer_syntax_uid, target
                ):
                    raise NotAcceptable(
                        f"instance {inst.sop_instance_uid} is stored in "
                        f"{inst.transfer_syntax_uid} and cannot be sent in {target}; ask for "
                        "transfer-syntax=* to get it as stored"
                    )
        # Open the first object before answering: an unreadable blob or an erased key is then
        # an error response (500, 410, 424), not a 200 whose stream is cut short.
        bodies = archive.retrieve.all_instance_chunks(found, target)

        headers = [
            {
                "Content-Type": "application/dicom; transfer-syntax="
                + (inst.transfer_syntax_uid if target == ANY_TRANSFER_SYNTAX else target)
            }
            for inst in found
        ]
        # Known up front when every part is sent as stored: the answer then has a length.
        sizes = [archive.retrieve.known_size(inst, target) for inst in found]
        known = [size for size in sizes if size is not None]
        length = None
        if len(known) == len(found):
            length = multipart_length(zip(headers, known, strict=True), boundary)
        stream = iter_multipart(zip(headers, bodies, strict=True), boundary)
        return stream, next_batch(stream), length

    stream, first, length = await run_in_threadpool(open_first)
    content_type = multipart_related_content_type(
        boundary, "application/dicom", None if target == ANY_TRANSFER_SYNTAX else target
    )
    return answer(stream, first, content_type, length)


# ---------------------------------------------------------------------- metadata
async def retrieve_metadata(request: Request) -> Response:
    """Metadata as application/dicom+json, bulk values as BulkDataURI (PS3.18 10.4.1.1.2)."""
    archive = archive_of(request)
    study, series, sop = _scope(request)
    choice = negotiate(accept_ranges(request), metadata_offers())
    body = await run_in_threadpool(
        archive.retrieve.metadata,
        principal_of(request),
        dicomweb_base(request),
        study,
        series,
        sop,
    )
    return Response(body, media_type=choice.media_type)


# ---------------------------------------------------------------------- frames
def frame_numbers(text: str) -> list[int]:
    """The frame numbers of a frame list, each named once (PS3.18 10.4.1.1.4).

    PS3.18 defines the frame list as one or more non-duplicate frame numbers in any order, so
    a list is at most the object's Number of Frames long (checked against the object by the
    service); one that repeats a number, the way to ask for 9,999 copies of one frame, is
    refused before anything is read.
    """
    if len(text) > _MAX_FRAME_LIST_CHARS:
        raise BadRequest(f"frame list is longer than {_MAX_FRAME_LIST_CHARS} characters")
    if not _FRAME_LIST.fullmatch(text):
        raise BadRequest(f"frame list {text[:40]!r} is not a comma-separated list of frame numbers")
    numbers = [int(n) for n in text.split(",")]
    seen: set[int] = set()
    for n in numbers:
        if n in seen:
            raise BadRequest(
                f"frame list names frame {n} more than once; a frame list holds each frame "
                "number once (PS3.18 10.4.1.1.4), so at most the object's Number of Frames"
            )
        seen.add(n)
    return numbers


async def _instance(request: Request) -> StoredInstance:
    archive = archive_of(request)
    study, series, sop = _scope(request)
    found = await run_in_threadpool(
        partial(archive.retrieve.instances, transfer=False),
        principal_of(request),
        study,
        series,
        sop,
    )
    return found[0]


async def retrieve_frames(request: Request) -> Response:
    """Frames of one instance (PS3.18 10.4.1.1.4): native as application/octet-stream, or each
    compressed frame as its bitstream media type when the client accepts it."""
    archive = archive_of(request)
    numbers = frame_numbers(request.path_params["frames"])
    study, series, sop = _scope(request)
    who = principal_of(request)
    accepted = accept_ranges(request)
    boundary = new_boundary()

    def open_first() -> tuple[Iterator[bytes], list[bytes], str, str]:
        # One trip to the thread pool: find the instance, read (or decode) the first frame
        # before answering, so an unreadable blob, an erased key or an undecodable object is
        # an error response, not a 200 cut short.
        inst = archive.retrieve.instances(who, study, series, sop, transfer=False)[0]
        stored = inst.transfer_syntax_uid
        compressed = [] if stored in NATIVE_SYNTAXES else [stored]
        choice = negotiate(accepted, frame_offers(compressed))
        as_stored = (
            choice.transfer_syntax in (ANY_TRANSFER_SYNTAX, stored) or stored in NATIVE_SYNTAXES
        )
        if choice.part_type == "application/octet-stream" and not as_stored:
            frames = archive.retrieve.decoded_frames(inst, numbers)
            part_type, syntax = "application/octet-stream", EXPLICIT_VR_LITTLE_ENDIAN
        else:
            frames = archive.retrieve.frames(inst, numbers)
            syntax = stored
            part_type = (
                "application/octet-stream"
                if stored in NATIVE_SYNTAXES
                else _MEDIA_TYPE_OF_SYNTAX.get(stored, "application/octet-stream")
            )
        part_ct = f"{part_type}; transfer-syntax={syntax}"
        stream = iter_multipart((({"Content-Type": part_ct}, body) for body in frames), boundary)
        return stream, next_batch(stream), part_type, syntax

    stream, first, part_type, syntax = await run_in_threadpool(open_first)
    return answer(stream, first, multipart_related_content_type(boundary, part_type, syntax))


def _multipart_response(
    bodies: Iterator[Iterator[bytes]], part_type: str, syntax: str | None, status: int = 200
) -> Response:
    """Each of ``bodies`` as a part, streamed: pulled from the blob store as the client reads."""
    boundary = new_boundary()
    part_ct = f"{part_type}; transfer-syntax={syntax}" if syntax else part_type
    parts = (({"Content-Type": part_ct}, body) for body in bodies)
    return StreamingResponse(
        in_batches(iter_multipart(parts, boundary)),
        status_code=status,
        media_type=multipart_related_content_type(boundary, part_type, syntax),
    )


# ---------------------------------------------------------------------- bulk data
async def retrieve_bulkdata(request: Request) -> Response:
    """A bulk data value, whole or one byte range (PS3.18 10.4.1.1.5, 8.3.? Range)."""
    archive = archive_of(request)
    inst = await _instance(request)
    path = request.path_params["path"]
    inflated = None
    if inst.transfer_syntax_uid == DEFLATED and path not in inst.bulk:
        # A deflated object's values have no byte position in the stored file.
        inflated = await run_in_threadpool(archive.retrieve.inflated_bulk, inst, path)
        offset, length = 0, len(inflated)
    else:
        offset, length = archive.retrieve.bulk(inst, path)
    offers = (
        Offer(
            "multipart/related",
            part_type="application/octet-stream",
            transfer_syntaxes=(EXPLICIT_VR_LITTLE_ENDIAN, ANY_TRANSFER_SYNTAX),
        ),
        Offer("application/octet-stream"),
    )
    choice = negotiate(accept_ranges(request), offers)
    status, headers = 200, {}
    byte_range = single_byte_range(request.headers.get("range", ""), length)
    if byte_range is not None:
        start, end = byte_range
        headers["content-range"] = f"bytes {start}-{end}/{length}"  # RFC 9110 15.3.7.1
        offset, length, status = offset + start, end - start + 1, 206
    if inflated is not None:
        chunks: Iterator[bytes] = iter((inflated[offset : offset + length],))
    else:
        # Opened before answering (a missing blob is an error response), then streamed: a bulk
        # value may be the whole Pixel Data of a multi-gigabyte object.
        chunks = await run_in_threadpool(archive.retrieve.read_range, inst, offset, length)
    if choice.media_type == "application/octet-stream":
        return StreamingResponse(
            in_batches(chunks),
            status_code=status,
            media_type="application/octet-stream",
            headers={"Content-Length": str(length), **headers},
        )
    return _multipart_response(iter((chunks,)), "application/octet-stream", None, status)


# ---------------------------------------------------------------------- rendered
async def retrieve_rendered(request: Request) -> Response:
    """Rendered instance or frame as JPEG/PNG/GIF (PS3.18 10.4.1.1.3, 8.3.5.1)."""
    archive = archive_of(request)
    inst = await _instance(request)
    options = render_options(request)
    frame = request.path_params.get("frames")
    number = None
    if frame is not None:
        numbers = frame_numbers(frame)
        if len(numbers) != 1:
            raise BadRequest("a rendered frame request names exactly one frame")
        number = numbers[0]
    body = await run_in_threadpool(archive.retrieve.rendered, inst, number, options)
    return Response(body, media_type=options.media_type)


async def retrieve_thumbnail(request: Request) -> Response:
    """Thumbnail of a study, series, instance or frame (PS3.18 10.4.1.1.? thumbnail)."""
    archive = archive_of(request)
    study, series, sop = _scope(request)
    found = await run_in_threadpool(
        partial(archive.retrieve.instances, transfer=False),
        principal_of(request),
        study,
        series,
        sop,
    )
    # A study or series is represented by its middle instance, as viewers' study browsers do.
    inst = found[len(found) // 2]
    options = render_options(request, thumbnail=True)
    frame = request.path_params.get("frames")
    if frame is not None:
        numbers = frame_numbers(frame)
        body = await run_in_threadpool(archive.retrieve.rendered, inst, numbers[0], options)
    else:
        body = await run_in_threadpool(archive.retrieve.thumbnail, inst, options)
    return Response(body, media_type=options.media_type)


def render_options(request: Request, *, thumbnail: bool = False) -> render.RenderOptions:
    params = {k: v for k, v in request.query_params.items() if k != "accept"}
    options = render.parse_render_query(params)
    choice = negotiate(accept_ranges(request), rendered_offers())
    viewport = options.viewport or ((128, 128) if thumbnail else None)
    return replace(options, media_type=choice.media_type, viewport=viewport)


# ---------------------------------------------------------------------- delete
async def delete_resource(request: Request) -> Response:
    """Delete a study, series or instance; 204 once its index rows are gone."""
    archive = archive_of(request)
    study, series, sop = _scope(request)
    await run_in_threadpool(archive.maintenance.delete, principal_of(request), study, series, sop)
    return Response(status_code=204)
