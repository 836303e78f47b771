"""STOW-RS (PS3.18 10.5): store instances sent as multipart/related application/dicom parts.

Each part streams into a spool file as it arrives (bounded memory whatever the request size)
and is stored in a worker thread while the next part is still being received. The response is
the Store Instances Response Module (PS3.18 Table 10.5.3-1): ReferencedSOPSequence for stored
objects (with a WarningReason when something about one was odd: issue 12), FailedSOPSequence
with a FailureReason for refused ones; 200 when all were stored without warnings, 202 when some
were or warnings exist, 409 when none were (PS3.18 10.5.3.1). Every refusal and warning reason is
also sent in a Warning header, so a person reading the response learns what was wrong with which
object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from nubis.errors import (
    BadRequest,
    InsufficientStorage,
    InvalidInstance,
    NubisError,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from nubis.services.store import StoreOutcome, warning_status
from nubis.web.dicomweb.accept import Offer, negotiate
from nubis.web.dicomweb.common import (
    accept_ranges,
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
_DIGITS = re.compile(r"[0-9]{1,19}")
# The Store Instances Response (PS3.18 10.5.3) in DICOM JSON; DICOM XML is not produced.
_RESPONSE_OFFERS = (Offer("application/dicom+json", aliases=("application/json",)),)

# RFC 9530 Content-Digest's sha-256 member: sha-256=:BASE64:
_SHA256_DIGEST = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/=]+):")


async def store_instances(request: Request) -> Response:
    archive = archive_of(request)
    study_uid = optional_path_uid(request, "study")
    part_type, boundary, _ = parse_multipart_content_type(request.headers.get("content-type"))
    if part_type and part_type.lower() != "application/dicom":
        raise UnsupportedMediaType(
            f'STOW-RS accepts multipart/related; type="application/dicom", not type="{part_type}"'
        )
    # The response is DICOM JSON only: a client that accepts none of it is refused (406,
    # PS3.18 8.7.5) before the body is read, not after its objects were stored.
    choice = negotiate(accept_ranges(request), _RESPONSE_OFFERS)
    principal = principal_of(request)
    # Refused (403) before the body is read, rather than once per part after it was.
    await run_in_threadpool(archive.store.authorize, principal)
    max_bytes, max_parts = archive.settings.stow_max_bytes, archive.settings.stow_max_parts
    _check_content_length(request.headers.get("content-length"), max_bytes)
    slots = asyncio.Semaphore(_IN_FLIGHT_PER_REQUEST)
    tasks: list[asyncio.Task[StoreOutcome]] = []
    body_error: NubisError | None = None
    too_large: PayloadTooLarge | None = None
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
        stream = _at_most(request.stream(), max_bytes)
        async for part, body in iter_parts(stream, boundary, default_type=part_type):
            if part.index >= max_parts:
                raise PayloadTooLarge(
                    f"STOW-RS request has more than stow_max_parts ({max_parts}) parts; "
                    f"parts after part {max_parts} were not read"
                )
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
            digest_error = content_digest_mismatch(part.headers, spooled.sha256, part.index)
            if digest_error is not None:
                spooled.discard()
                tasks.append(asyncio.create_task(_failed(digest_error)))
                continue
            await slots.acquire()
            tasks.append(asyncio.create_task(store(spooled)))
    except PayloadTooLarge as exc:
        # What was received whole before the limit is stored (or being stored) and reported;
        # the part the limit cut was never stored (its spool file is removed), and the rest
        # of the body is not read.
        too_large = exc
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
    if too_large is not None:
        if not outcomes:
            raise too_large
        outcomes.append(StoreOutcome(None, None, None, None, error=too_large))
        return _response(
            outcomes, dicomweb_base(request), study_uid, media_type=choice.media_type, status=413
        )
    if not outcomes and not isinstance(body_error, InsufficientStorage):
        raise body_error or BadRequest("the request holds no application/dicom part")
    if body_error is not None:
        outcomes.append(StoreOutcome(None, None, None, None, error=body_error))
    return _response(outcomes, dicomweb_base(request), study_uid, media_type=choice.media_type)


def _check_content_length(header: str | None, max_bytes: int) -> None:
    """413 before reading a body whose declared length is over ``stow_max_bytes``."""
    if header is not None and _DIGITS.fullmatch(header.strip()) and int(header) > max_bytes:
        raise PayloadTooLarge(
            f"STOW-RS request of {int(header)} bytes exceeds stow_max_bytes ({max_bytes} bytes); "
            "send the objects in several requests"
        )


async def _at_most(stream: AsyncIterable[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    """The request body's first ``max_bytes`` bytes, then a refusal (413) if there are more.

    The bytes within the limit are passed on even when a chunk straddles it, so a part that
    ends within the limit is stored whatever the chunking of the body.
    """
    received = 0
    async for chunk in stream:
        room = max_bytes - received
        received += len(chunk)
        if received > max_bytes:
            if room > 0:
                yield chunk[:room]
            raise PayloadTooLarge(
                f"STOW-RS request body exceeds stow_max_bytes ({max_bytes} bytes); the rest "
                "was not read: send the objects in several requests"
            )
        yield chunk


async def _refused(index: int, media_type: str) -> StoreOutcome:
    return StoreOutcome(
        None,
        None,
        None,
        None,
        error=InvalidInstance(f"part {index + 1} is {media_type}, not application/dicom"),
    )


async def _failed(error: NubisError) -> StoreOutcome:
    return StoreOutcome(None, None, None, None, error=error)


def content_digest_mismatch(
    headers: dict[str, str], sha256_hex: str, index: int
) -> InvalidInstance | None:
    """The refusal of a part whose ``Content-Digest: sha-256=:BASE64:`` header (RFC 9530)
    names other bytes than were received; None when they match, or no sha-256 is named.

    A sender that names the digest (a primary replicating here, nubis.replication) learns
    from the answer itself that what this archive keeps is what it sent: the stored row's
    SHA-256 is the one computed while the part was spooled."""
    header = headers.get("content-digest")
    match = None if header is None else _SHA256_DIGEST.search(header)
    if match is None:
        return None  # RFC 9530 2: a recipient may ignore the algorithms it does not check
    try:
        expected = base64.b64decode(match.group(1), validate=True).hex()
    except ValueError:
        return InvalidInstance(f"part {index + 1}: Content-Digest sha-256 is not base64")
    if expected != sha256_hex:
        return InvalidInstance(
            f"part {index + 1}: its bytes do not have the SHA-256 its Content-Digest names",
            dimse_status=0xA900,
        )
    return None


def _uid(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _response(
    outcomes: list[StoreOutcome],
    base: str,
    study_uid: str | None,
    media_type: str = "application/dicom+json",
    status: int | None = None,
) -> Response:
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings: list[str] = []
    warned = 0
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
            if outcome.warnings:
                # PS3.18 10.5.3: stored, with a Warning Reason, and a 202 for the response.
                item["00081196"] = {"vr": "US", "Value": [warning_status(outcome.warnings)]}
                warned += 1
                for warning in outcome.warnings:
                    if len(warnings) < _MAX_WARNINGS:
                        detail = warning.detail.replace('"', "'")
                        warnings.append(
                            f'299 nubis "{outcome.sop_instance_uid}: {detail} '
                            f'(0x{warning.status:04X})"'
                        )
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
    if status is None:
        status = 200 if not failed and not warned else (202 if referenced else 409)
    if status == 409 and all(o.error is None or o.error.http_status == 507 for o in outcomes):
        status = 507  # nothing stored for want of room (0xA700), not for the objects' faults
    headers = [("warning", w) for w in warnings]
    response = Response(
        json.dumps(dataset, separators=(",", ":")),
        status_code=status,
        media_type=media_type,
    )
    for name, value in headers:
        response.headers.append(name, value.encode("latin-1", "replace").decode("latin-1"))
    if failed:
        log.info("STOW-RS: %d stored, %d refused", len(referenced), len(failed))
    return response
