"""Shared pieces of the DICOMweb routes: UIDs from the path, base URLs, the caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response, StreamingResponse

from nubis.archive import Archive
from nubis.dicom.uids import is_usable
from nubis.errors import BadRequest, Unauthorized
from nubis.security.policy import Principal
from nubis.web.dicomweb.accept import MediaRange, accept_from_request
from nubis.web.urls import site_url


def archive_of(request: HTTPConnection) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


def check_uid(value: str, what: str) -> str:
    """``value`` if it is a UI value (PS3.5 9.1) or one of the non-conformant ones the archive
    names objects by (nubis.dicom.uids), else a 400 naming ``what``."""
    if not is_usable(value):
        # Not quoted: a value that is no UID may be anything (nubis.dicom.identifying).
        raise BadRequest(f"{what} ({len(value)} characters) is not a valid UID")
    return value


_LABELS = {
    "study": "Study Instance UID",
    "series": "Series Instance UID",
    "instance": "SOP Instance UID",
}


def path_uid(request: Request, name: str) -> str:
    """A UID from the URL path, refused with 400 unless valid."""
    return check_uid(str(request.path_params[name]), _LABELS[name])


def optional_path_uid(request: Request, name: str) -> str | None:
    return path_uid(request, name) if name in request.path_params else None


def accept_ranges(request: Request) -> list[MediaRange]:
    """The Accept media ranges; the ``accept`` query parameter wins (PS3.18 8.3.3.1)."""
    query_accept = ",".join(request.query_params.getlist("accept")) or None
    header = ",".join(request.headers.getlist("accept")) or None
    return accept_from_request(header, query_accept)


def dicomweb_base(request: Request) -> str:
    """The DICOMweb root URL as clients reach it (web/urls.py)."""
    return f"{site_url(request)}/dicom-web"


def principal_of(request: Request) -> Principal:
    """The authenticated caller (set by :class:`nubis.web.auth.AuthMiddleware`).

    Services take it and decide tenant, scope and permission from it; a route that finds none
    is wired without the middleware, which is refused rather than served openly.
    """
    principal = request.scope.get("nubis.principal")
    if not isinstance(principal, Principal):
        raise Unauthorized("authentication required")
    return principal


_BATCH_BYTES = 4 << 20


def next_batch(chunks: Iterator[bytes]) -> list[bytes]:
    """Up to 4 MiB of ``chunks`` (blocking: call it in a worker thread)."""
    batch: list[bytes] = []
    size = 0
    for chunk in chunks:
        batch.append(chunk)
        size += len(chunk)
        if size >= _BATCH_BYTES:
            break
    return batch


async def in_batches(
    chunks: Iterator[bytes], first: list[bytes] | None = None
) -> AsyncIterator[bytes]:
    """Stream a blocking iterator, pulling up to 4 MiB per trip to the thread pool.

    Starlette would fetch every chunk with its own thread hop; for objects of a few hundred
    kilobytes those hops, not the disk, bound retrieval throughput. ``first`` is a batch the
    caller already pulled (:func:`next_batch`) in the trip that found what to send, so a small
    answer costs one trip in all.
    """
    batch = first if first is not None else await run_in_threadpool(next_batch, chunks)
    while batch:
        for chunk in batch:
            yield chunk
        if sum(map(len, batch)) < _BATCH_BYTES:
            return  # a short batch is the last: no trip to learn that the stream has ended
        batch = await run_in_threadpool(next_batch, chunks)


def answer(
    stream: Iterator[bytes], first: list[bytes], media_type: str, length: int | None = None
) -> Response:
    """The response for ``stream``, of which ``first`` (:func:`next_batch`) was pulled: whole
    when that was all of it (a streaming response costs a task group and a disconnect watcher
    per request, more than a small answer's copy), else streamed; with a Content-Length when
    ``length`` says how long it is (no chunked transfer coding for the client to undo)."""
    if sum(map(len, first)) < _BATCH_BYTES:
        return Response(b"".join(first), media_type=media_type)
    headers = None if length is None else {"Content-Length": str(length)}
    return StreamingResponse(in_batches(stream, first), media_type=media_type, headers=headers)
