"""WADO-URI (PS3.18 9): ``/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..``.

Old viewers and many EHR links still use it. ``contentType`` selects the object itself
(application/dicom, as stored or in ``transferSyntax``) or a rendered image (image/jpeg, the
default for images, or image/png, image/gif) with the rendering parameters of PS3.18 9.1.2.1.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from nubis.dicom import render
from nubis.errors import BadRequest, NotAcceptable
from nubis.web.dicomweb.common import archive_of, check_uid, in_batches, principal_of

_RENDERED = ("image/jpeg", "image/png", "image/gif")
# Number of Frames is an IS (at most 2^31-1): ten digits, which also bounds int()'s work.
_FRAME_NUMBER = re.compile(r"0*[1-9][0-9]{0,9}")


async def wado_uri(request: Request) -> Response:
    params = request.query_params
    if params.get("requestType") != "WADO":
        raise BadRequest("requestType must be WADO (PS3.18 9.1.2.1)")
    uids = []
    for name in ("studyUID", "seriesUID", "objectUID"):
        if not params.get(name):
            raise BadRequest(f"{name} is required (PS3.18 9.1.2.1)")
        uids.append(check_uid(params[name], name))
    frame_number = _frame_number(params.get("frameNumber", ""))
    archive = archive_of(request)
    content_types = [c.strip() for c in params.get("contentType", "image/jpeg").split(",")]
    # The first type offered is the one served (the loop below): only then does the object
    # leave whole, which a caller who may view but not download is refused.
    offered = [c for c in content_types if c == "application/dicom" or c in _RENDERED]
    whole = bool(offered) and offered[0] == "application/dicom"
    found = await run_in_threadpool(
        partial(archive.retrieve.instances, transfer=whole),
        principal_of(request),
        *uids,
    )
    inst = found[0]
    frames = inst.number_of_frames or 1
    if frame_number is not None and frame_number > frames:
        raise BadRequest(
            f"frameNumber {frame_number} is not a frame of this object: it has {frames} "
            "frame(s), numbered from 1 (PS3.18 9.1.2.1)"
        )
    for content_type in content_types:
        if content_type == "application/dicom":
            syntax = params.get("transferSyntax") or "*"
            return StreamingResponse(
                in_batches(archive.retrieve.instance_chunks(inst, syntax)),
                media_type="application/dicom",
            )
        if content_type in _RENDERED:
            options = replace(render.parse_wado_uri_query(params), media_type=content_type)
            body = await run_in_threadpool(archive.retrieve.rendered, inst, frame_number, options)
            return Response(body, media_type=content_type)
    raise NotAcceptable(
        f"contentType {params.get('contentType')!r} is not offered; use application/dicom, "
        "image/jpeg, image/png or image/gif"
    )


def _frame_number(value: str) -> int | None:
    """frameNumber (PS3.18 9.1.2.1): one frame, numbered from 1; absent or empty: none given.
    Whether the object has that frame is checked once the object is found."""
    if not value:
        return None
    if not _FRAME_NUMBER.fullmatch(value):
        raise BadRequest(f"frameNumber must be one frame number (1, 2, ...), got {value[:20]!r}")
    return int(value)
