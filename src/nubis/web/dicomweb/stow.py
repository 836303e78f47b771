"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related application/dicom parts.

Each part streams into a spool file as it arrives (bounded memory whatever the request size)
and is stored in a worker thread while the next part is still being received. The response is
the Store Instances Response Module (PS3.18 Table 10.5.3-1): ReferencedSOPSequence for stored
objects, FailedSOPSequence with a FailureReason for refused ones; 200 when all were stored, 202
when some were, 409 when none were (PS3.18 10.5.3.1). Every refusal reason is also sent in a
Warning header, so a person reading the response learns what was wrong with which object.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from nubis.errors import (
    BadRequest,
    InsufficientStorage,
    InvalidInstance,
    NubisError,
    UnsupportedMediaType,
)
from nubis.services.store import StoreOutcome
from nubis.web.dicomweb.common import (
    archive_of,
    dicomweb_base,
    optional_path_uid,
    principal_of,
)
from nubis.web.dicomweb.multipart import iter_parts, parse_multipart_content_type

log = logging.getLogger(__name__)

# Parts stored concurrently per request; the rest wait in the spool.
_IN_FLIGHT_PER_REQUEST = 4
_MAX_WARNINGS = 20


async def store_instances(request: Request) -> Response:
    archive = archive_of(request)
    study_uid = optional_path_uid(request, "study")
    part_type, boundary, _ = parse_multipart_content_type(request.headers.get("content-type"))
    if part_type and part_type.lower() != "application/dicom":
        raise UnsupportedMediaType(
            f'STOW-RS accepts multipart/related; type="application/dicom", not type="{part_type}"'
        )
    principal = principal_of(request)
    # Refused (403) before the body is read, rather than once per part after it was.
    await run_in_threadpool(archive.store.authorize, principal)
    slots = asyncio.Semaphore(_IN_FLIGHT_PER_REQUEST)
    tasks: list[asyncio.Task[StoreOutcome]] = []
    body_error: NubisError | None = None
    client_gone = False

    async def store(spooled: Any) -> StoreOutcome:
        try:
            return await run_in_threadpool(
                archive.store.store, spooled, principal=principal, expected_study_uid=study_uid
            )
        finally:
            slots.release()

    try:
        # Below the free-disk floor the body is not read at all (nubis.services.disk_floor).
        await run_in_threadpool(archive.store.check_room)
        async for part, body in iter_parts(request.stream(), boundary, default_type=part_type):
            if part.media_type != "application/dicom":
                async for _ in body:
                    pass
                tasks.append(asyncio.create_task(_refused(part.index, part.media_type)))
                continue
            writer = archive.spool.writer()
            try:
                async for chunk in body:
                    writer.write(chunk)
            except BaseException:
                writer.abort()
                raise
            spooled = writer.finish()
            await slots.acquire()
            tasks.append(asyncio.create_task(store(spooled)))
    except (BadRequest, InsufficientStorage) as exc:
        # A malformed body, or no room for the next part: answered for what came before.
        body_error = exc
    except ClientDisconnect:
        # A client that gives up mid-upload is not a server fault: no error log, and no one is
        # left to read an answer. Parts received whole before that may still have been stored.
        client_gone = True
    finally:
        outcomes = list(await asyncio.gather(*tasks)) if tasks else []

    if client_gone:
        stored = sum(o.ok for o in outcomes)
        log.info("STOW-RS: client disconnected mid-request; %d part(s) stored", stored)
        return Response(status_code=400)
    if not outcomes and not isinstance(body_error, InsufficientStorage):
        raise body_error or BadRequest("the request holds no application/dicom part")
    if body_error is not None:
        outcomes.append(StoreOutcome(None, None, None, None, error=body_error))
    return _response(outcomes, dicomweb_base(request), study_uid)


async def _refused(index: int, media_type: str) -> StoreOutcome:
    return StoreOutcome(
        None,
        None,
        None,
        None,
        error=InvalidInstance(f"part {index + 1} is {media_type}, not application/dicom"),
    )


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _response(outcomes: list[StoreOutcome], base: str, study_uid: str | None) -> Response:
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings: list[str] = []
    for outcome in outcomes:
        item: dict[str, Any] = {}
        if outcome.sop_class_uid:
            item["00081150"] = _uid(outcome.sop_class_uid)
        if outcome.sop_instance_uid:
            item["00081155"] = _uid(outcome.sop_instance_uid)
        if outcome.error is None:
            url = (
                f"{base}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                f"/instances/{outcome.sop_instance_uid}"
            )
            item["00081190"] = {"vr": "UR", "Value": [url]}
            referenced.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [outcome.error.dimse_status]}
            failed.append(item)
            if len(warnings) < _MAX_WARNINGS:
                who = outcome.sop_instance_uid or "an object"
                reason = outcome.error.reason.replace('"', "'")
                warnings.append(f'299 nubis "{who}: {reason} (0x{outcome.error.dimse_status:04X})"')
    dataset: dict[str, Any] = {}
    study_uids = {o.study_uid for o in outcomes if o.ok}
    if study_uid or len(study_uids) == 1:
        dataset["00081190"] = {
            "vr": "UR",
            "Value": [f"{base}/studies/{study_uid or next(iter(study_uids))}"],
        }
    if failed:
        dataset["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        dataset["00081199"] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else (202 if referenced else 409)
    if status == 409 and all(o.error is None or o.error.http_status == 507 for o in outcomes):
        status = 507  # nothing stored for want of room (0xA700), not for the objects' faults
    headers = [("warning", w) for w in warnings]
    response = Response(
        json.dumps(dataset, separators=(",", ":")),
        status_code=status,
        media_type="application/dicom+json",
    )
    for name, value in headers:
        response.headers.append(name, value.encode("latin-1", "replace").decode("latin-1"))
    if failed:
        log.info("STOW-RS: %d stored, %d refused", len(referenced), len(failed))
    return response
