"""A DICOMweb server as a migration source: QIDO-RS lists, WADO-RS delivers (PS3.18 10.4, 10.6).

Studies are listed page by page (``limit``/``offset``) within the migration's dates, with
their instance counts; instances by a QIDO-RS query of the study. A whole study is retrieved
in one WADO-RS request, a study of which the archive already holds some instances one instance
at a time. Objects are asked for as stored (``transfer-syntax=*``), so the bytes delivered are
the source's own and their SHA-256 compares with what the archive stores; the multipart
response is split as it streams, each part written to the spool, never held whole.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from nubis.migrate.request import MigrationRequest
from nubis.migrate.source import Deliver, ListingGap, SourceError, SourceInstance, SourceStudy
from nubis.services.spool import Spool, SpoolWriter

__all__ = ["DicomWebSource"]

log = logging.getLogger(__name__)

_PAGE = 500
_CHUNK = 1 << 16
_TIMEOUT = 300
_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_DEFAULT_SYNTAX = 'multipart/related; type="application/dicom"'
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_STUDY_DATE, _STUDY_INSTANCES = "00080020", "00201208"


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values and values[0] is not None else None


class DicomWebSource:
    gives_bytes = True

    def __init__(self, request: MigrationRequest, spool: Spool) -> None:
        self.root = request.source.rstrip("/")
        self.request = request
        self.spool = spool
        self.description = f"DICOMweb {self.root}"
        self.gaps: list[ListingGap] = []
        self._headers = {"Authorization": request.authorization} if request.authorization else {}
        self._accept = _AS_STORED

    # ------------------------------------------------------------------ HTTP
    def _open(self, path: str, accept: str) -> Any:
        req = urllib.request.Request(
            f"{self.root}{path}", headers={"Accept": accept, **self._headers}
        )
        try:
            return urllib.request.urlopen(req, timeout=_TIMEOUT)
        except urllib.error.HTTPError as exc:
            raise SourceError(f"{self.root}{path.split('?')[0]}: HTTP {exc.code}") from None
        except OSError as exc:
            raise SourceError(f"{self.root} cannot be reached: {exc}") from None

    def _json(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._open(f"{path}?{urlencode(params, doseq=True)}", "application/dicom+json") as r:
            body = r.read()
        return json.loads(body) if body.strip() else []

    def _paged(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self._json(path, {**params, "limit": _PAGE, "offset": offset})
            yield from page
            if len(page) < _PAGE:
                return
            offset += len(page)

    # ------------------------------------------------------------------ listing
    def studies(self) -> Iterator[SourceStudy]:
        params: dict[str, Any] = {"includefield": ["00201208", "00080020"]}
        if self.request.date_from or self.request.date_to:
            params["StudyDate"] = f"{self.request.date_from or ''}-{self.request.date_to or ''}"
        for item in self._paged("/studies", params):
            uid = _value(item, _STUDY_UID)
            if uid is None:
                self.gaps.append(ListingGap("a QIDO-RS study result", "no Study Instance UID"))
                continue
            count = _value(item, _STUDY_INSTANCES)
            yield SourceStudy(uid, _value(item, _STUDY_DATE), int(count) if count else None)

    def instances(self, study: SourceStudy) -> list[SourceInstance]:
        found = []
        path = f"/studies/{quote(study.study_uid)}/instances"
        for item in self._paged(path, {"includefield": [_SERIES_UID]}):
            sop = _value(item, _SOP_UID)
            if sop is None:
                self.gaps.append(ListingGap(f"an instance of study {study.study_uid}", "no UID"))
                continue
            found.append(SourceInstance(sop, _value(item, _SERIES_UID)))
        return found

    # ------------------------------------------------------------------ bytes
    def fetch(
        self, study: SourceStudy, wanted: list[SourceInstance], deliver: Deliver
    ) -> dict[str, str]:
        reasons: dict[str, str] = {}
        whole = study.instances is not None and len(wanted) >= study.instances
        if whole:
            self._retrieve(f"/studies/{quote(study.study_uid)}", deliver, wanted, reasons)
            return reasons
        for instance in wanted:
            if instance.series_uid is None:
                reasons[instance.sop_instance_uid] = "the source gave no Series UID"
                continue
            path = (
                f"/studies/{quote(study.study_uid)}/series/{quote(instance.series_uid)}"
                f"/instances/{quote(instance.sop_instance_uid)}"
            )
            self._retrieve(path, deliver, [instance], reasons)
        return reasons

    def _retrieve(
        self,
        path: str,
        deliver: Deliver,
        wanted: list[SourceInstance],
        reasons: dict[str, str],
    ) -> None:
        """Deliver what ``path`` answers; why not, for each of ``wanted``, into ``reasons``."""
        try:
            response = self._open(path, self._accept)
        except SourceError as exc:
            if self._accept == _AS_STORED and "HTTP 406" in str(exc):
                # A server that cannot send objects as stored sends its default syntax.
                self._accept = _DEFAULT_SYNTAX
                response = self._open(path, self._accept)
            else:
                for instance in wanted:
                    reasons[instance.sop_instance_uid] = f"WADO-RS: {exc}"
                return
        with response:
            boundary = _boundary(response.headers.get("Content-Type", ""))
            if boundary is None:
                for instance in wanted:
                    reasons[instance.sop_instance_uid] = "WADO-RS answer not multipart"
                return
            for spooled in _split(response, boundary, self.spool):
                deliver(spooled)

    def close(self) -> None:
        """Nothing is held open between requests."""


def _boundary(content_type: str) -> bytes | None:
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        return None
    for param in rest.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary" and value:
            return value.strip().strip('"').encode()
    return None


def _split(stream: BinaryIO, boundary: bytes, spool: Spool) -> Iterator[Any]:
    """The parts of a multipart/related body (RFC 2046 5.1) as spooled files, read in chunks:
    at most one chunk and a delimiter's length in memory."""
    delimiter = b"\r\n--" + boundary
    buffer = b"\r\n"  # the first delimiter has no CRLF before it
    writer: SpoolWriter | None = None
    in_headers = False
    ended = False
    while not ended:
        chunk = stream.read(_CHUNK)
        buffer += chunk
        while True:
            if in_headers:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    break
                buffer = buffer[end + 4 :]
                in_headers = False
                writer = spool.writer()
                continue
            at = buffer.find(delimiter)
            if at < 0:
                # Keep what could be the start of a delimiter split across two chunks.
                keep = len(delimiter) + 2
                if writer is not None and len(buffer) > keep:
                    writer.write(buffer[:-keep])
                    buffer = buffer[-keep:]
                break
            if writer is not None:
                writer.write(buffer[:at])
                yield writer.finish()
                writer = None
            after = buffer[at + len(delimiter) :]
            if len(after) < 2:
                break  # need to see whether this is the closing delimiter
            if after.startswith(b"--"):
                ended = True
                break
            buffer = after
            in_headers = True
        if not chunk:
            break
    if writer is not None:
        writer.abort()  # a part cut off by the end of the stream is not an object
