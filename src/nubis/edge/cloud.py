"""The cloud archive as an edge node reads it back: WADO-RS of one instance as stored.

The answer is one part of ``multipart/related; type="application/dicom"`` with
``transfer-syntax=*`` (PS3.18 8.7.3.5.2: the instance in the transfer syntax the cloud holds
it in, which is the one the edge forwarded it in: nubis keeps a replicated object byte for
byte). It is spooled to an anonymous local file and handed over only once its SHA-256 is the
one the edge's index kept: bytes that differ are never served.

A cloud that does not answer, answers 5xx, 408 or 429, or does not take the edge's credential
(401, 403) is :class:`CloudUnavailable`: a 503 with Retry-After at the front doors, a failed
sub-operation (final status 0xA702) for C-MOVE and C-GET. The API key goes in the
Authorization header only, never in a reason or a log line.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import tempfile
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from nubis.errors import BlobCorrupted, StorageUnavailable
from nubis.logs import redact_url
from nubis.ports.blobs import BlobContext, BlobNotFound

__all__ = ["CloudArchive", "CloudUnavailable"]

_TIMEOUT = 60
_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_CHUNK = 1 << 20
# The part's headers and the delimiters around it lie within this many bytes of either end.
_HEAD_BYTES = 16 << 10
_TAIL_BYTES = 1 << 10


class CloudUnavailable(StorageUnavailable):
    """An evicted object cannot be read back now: the cloud archive cannot be reached or does
    not take the edge's credential. HTTP 503 with Retry-After (RFC 9110 15.6.4, 10.2.3);
    DIMSE 0xA702 Refused: Out of Resources - Unable to perform sub-operations (PS3.4
    C.4.2.1.5, C.4.3.1.4), what C-MOVE and C-GET end with when no object could be sent."""

    dimse_status = 0xA702
    retry_after = 30


class CloudArchive:
    def __init__(self, root: str, api_key: str, scratch: Path) -> None:
        self.root = root.rstrip("/")
        self.shown = redact_url(self.root)
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.scratch = scratch

    def fetch(self, context: BlobContext) -> BinaryIO:
        """The object ``context`` names as the cloud holds it, checked against
        ``context.sha256``, in an anonymous local file at its start (the caller closes it).
        BlobNotFound when the cloud does not hold it; CloudUnavailable when it cannot say;
        BlobCorrupted when its bytes are not the object's."""
        path = (
            f"/studies/{quote(context.study_uid)}/series/{quote(context.series_uid)}"
            f"/instances/{quote(context.sop_instance_uid)}"
        )
        request = urllib.request.Request(
            self.root + path, headers={"Accept": _ACCEPT, **self._auth}
        )
        self.scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.scratch, prefix="cloud-") as answer:
            try:
                with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
                    content_type = response.headers.get("Content-Type")
                    shutil.copyfileobj(response, answer, _CHUNK)
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    raise BlobNotFound(context.sop_instance_uid) from None
                raise CloudUnavailable(
                    f"instance {context.sop_instance_uid} is held by the cloud archive "
                    f"{self.shown}, which answered HTTP {exc.code}: try again later"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or type(exc).__name__
                raise CloudUnavailable(
                    f"instance {context.sop_instance_uid} is held by the cloud archive "
                    f"{self.shown}, which cannot be reached ({reason}): try again later"
                ) from None
            return self._checked_part(answer, content_type, context)

    def _checked_part(
        self, answer: BinaryIO, content_type: str | None, context: BlobContext
    ) -> BinaryIO:
        """The one part of the multipart ``answer``, copied out if its SHA-256 is right."""
        header = Message()
        header["Content-Type"] = content_type or ""
        named = header.get_param("boundary")
        if header.get_content_type() != "multipart/related" or not isinstance(named, str):
            raise self._corrupted(context, "not a multipart/related answer")
        boundary = named.encode("ascii", "replace")
        size = answer.seek(0, 2)
        answer.seek(0)
        head = answer.read(_HEAD_BYTES)
        opening = head.find(b"--" + boundary)
        start = head.find(b"\r\n\r\n", opening) + 4
        answer.seek(max(0, size - _TAIL_BYTES))
        tail_at = answer.tell()
        closing = answer.read().rfind(b"\r\n--" + boundary)
        if opening < 0 or start < 4 or closing < 0 or tail_at + closing < start:
            raise self._corrupted(context, "no part in the answer")
        end = tail_at + closing
        answer.seek(start)
        # Handed to the caller, who closes it (an anonymous file: nothing is left behind).
        part = tempfile.TemporaryFile(dir=self.scratch, prefix="cloud-part-")  # noqa: SIM115
        digest = hashlib.sha256()
        left = end - start
        while left > 0:
            chunk = answer.read(min(_CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            part.write(chunk)
            left -= len(chunk)
        if left or digest.hexdigest() != context.sha256:
            part.close()
            raise self._corrupted(context, "its SHA-256 is not the one this archive recorded")
        part.seek(0)
        return part

    def _corrupted(self, context: BlobContext, why: str) -> BlobCorrupted:
        return BlobCorrupted(
            f"the cloud archive {self.shown}'s copy of instance {context.sop_instance_uid} "
            f"was refused: {why}"
        )
