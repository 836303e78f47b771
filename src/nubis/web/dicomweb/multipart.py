"""multipart/related bodies: a streaming reader for STOW-RS, a lazy writer for WADO-RS.

The reader (:func:`iter_parts`) parses RFC 2046 5.1.1 / RFC 2387 bodies of any size with bounded
memory: it holds at most one network chunk plus ``len(boundary) + 3`` bytes of carry-over (or one
part's header block, at most :data:`MAX_HEADER_BYTES`), and hands out part data as soon as it
cannot be the start of a delimiter. In the steady state each chunk received from the server is
passed on unchanged (no copy), which keeps it at memory speed on the STOW-RS hot path (PS3.18 10.5,
8.6.1.2).

The writer (:func:`iter_multipart`) is a plain generator because WADO-RS streams blobs from a
thread pool.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from nubis.errors import BadRequest, UnsupportedMediaType
from nubis.web.dicomweb.accept import parse_media_type

__all__ = [
    "DEFAULT_PART_TYPE",
    "MAX_HEADER_BYTES",
    "Part",
    "iter_multipart",
    "iter_parts",
    "multipart_related_content_type",
    "new_boundary",
    "parse_multipart_content_type",
]

DEFAULT_PART_TYPE = "application/dicom"
"""Type of parts without Content-Type when the body names no ``type`` (STOW-RS, PS3.18 10.5.1)."""

MAX_HEADER_BYTES = 16 * 1024
"""Largest header block of one part; real clients send well under 1 KiB."""

_MAX_PADDING = 1024
_CRLF = b"\r\n"
_HEADER_END = b"\r\n\r\n"
_MAX_BOUNDARY = 200


def parse_multipart_content_type(header: str | None) -> tuple[str, bytes, dict[str, str]]:
    """Parse the Content-Type of a STOW-RS request (RFC 2387 3.1, PS3.18 8.6.1.2).

    Parameters
    ----------
    header : str or None
        The Content-Type field value.

    Returns
    -------
    tuple[str, bytes, dict[str, str]]
        The ``type`` parameter, lower-cased (``""`` if absent), the boundary as bytes, and all
        parameters keyed by lower-cased name.

    Raises
    ------
    UnsupportedMediaType
        If the media type is not ``multipart/related``.
    BadRequest
        If the field is malformed or the boundary is missing or invalid.
    """
    if header is None or not header.strip():
        raise UnsupportedMediaType("request has no Content-Type; expected multipart/related")
    type_, subtype, params = parse_media_type(header)
    if (type_, subtype) != ("multipart", "related"):
        raise UnsupportedMediaType(
            f"Content-Type {type_}/{subtype} is not supported; expected multipart/related"
        )
    boundary = params.get("boundary")
    if boundary is None:
        raise BadRequest("multipart/related Content-Type has no boundary parameter")
    # RFC 2046 limits boundaries to 70 characters; some clients exceed it, so only what could
    # break delimiter recognition is refused.
    if not boundary or len(boundary) > _MAX_BOUNDARY:
        raise BadRequest(
            f"multipart boundary must be 1 to {_MAX_BOUNDARY} characters, got {len(boundary)}"
        )
    if not boundary.isascii() or not boundary.isprintable():
        raise BadRequest(f"multipart boundary {boundary!r} contains non-printable characters")
    return params.get("type", ""), boundary.encode("ascii"), params


@dataclass(frozen=True)
class Part:
    """Headers of one body part.

    Attributes
    ----------
    index : int
        Position in the body, from 0.
    headers : dict[str, str]
        Part header fields keyed by lower-cased name; repeated fields are joined with ``", "``.
    content_type : str
        The part's Content-Type value as sent (parameters included), or the multipart ``type``
        parameter when the part has none.
    """

    index: int
    headers: dict[str, str] = field(hash=False)
    content_type: str

    @property
    def media_type(self) -> str:
        """``type/subtype`` of :attr:`content_type`, lower-cased, without parameters."""
        return self.content_type.partition(";")[0].strip().lower()

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter of the part's Content-Type, if any."""
        try:
            return parse_media_type(self.content_type)[2].get("transfer-syntax")
        except BadRequest:
            return None


class _Reader:
    """Buffer and state of one multipart body; see :func:`iter_parts`.

    ``_buf[_pos:]`` is the data received and not yet consumed. The body starts with a virtual CRLF
    so that a first boundary at offset 0 is found by the same search as every other delimiter
    (RFC 2046: the CRLF before a boundary belongs to the delimiter, not to the preceding data).
    """

    __slots__ = ("_buf", "_delim", "_done", "_eof", "_lead", "_pos", "_stream", "part")

    def __init__(self, stream: AsyncIterable[bytes], boundary: bytes) -> None:
        self._stream = stream.__aiter__()
        self._delim = b"\r\n--" + boundary
        self._buf = _CRLF
        self._pos = 0
        self._eof = False
        self.part = -1
        # Body of the current part fully read (positioned at its closing delimiter).
        self._done = True
        # The CRLF ending the header block is still in the buffer: it is the body's first bytes
        # unless it starts the next delimiter (a part with no body).
        self._lead = False

    async def _fill(self) -> bool:
        """Append the next non-empty chunk to the unconsumed data; ``False`` at end of stream."""
        if self._eof:
            return False
        while True:
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._eof = True
                return False
            if chunk:
                break
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            self._buf = chunk
        else:
            self._buf = (buf[pos:] if pos else buf) + chunk
        self._pos = 0
        return True

    async def _ensure(self, n: int) -> bool:
        while len(self._buf) - self._pos < n:
            if not await self._fill():
                return False
        return True

    async def find_first_delimiter(self) -> None:
        """Skip the preamble up to the first delimiter, keeping only a delimiter's length."""
        delim = self._delim
        keep = len(delim) - 1
        while True:
            i = self._buf.find(delim, self._pos)
            if i >= 0:
                self._pos = i
                return
            self._pos = max(self._pos, len(self._buf) - keep)
            if not await self._fill():
                boundary = delim[4:].decode("latin-1")
                raise BadRequest(f"multipart body contains no boundary delimiter --{boundary}")

    async def after_delimiter(self) -> bool:
        """Consume a delimiter line at the cursor; ``True`` if it is the close delimiter.

        Leaves the cursor on the CRLF that ends the delimiter line, so that an empty header block
        is that CRLF followed directly by another one.
        """
        self._pos += len(self._delim)
        if not await self._ensure(2):
            raise BadRequest("multipart body ended before the closing boundary")
        if self._buf.startswith(b"--", self._pos):
            # The epilogue is ignored (RFC 2046 5.1.1) and is not even read.
            return True
        padding = 0
        while True:
            buf = self._buf
            pos = self._pos
            end = len(buf)
            while pos < end and buf[pos] in b" \t":
                pos += 1
            padding += pos - self._pos
            self._pos = pos
            if padding > _MAX_PADDING:
                raise BadRequest(f"more than {_MAX_PADDING} bytes of padding after a boundary")
            if pos < end:
                break
            if not await self._fill():
                raise BadRequest("multipart body ended before the closing boundary")
        if not await self._ensure(2):
            raise BadRequest("multipart body ended before the closing boundary")
        if not self._buf.startswith(_CRLF, self._pos):
            got = bytes(self._buf[self._pos : self._pos + 16])
            raise BadRequest(
                f"multipart boundary delimiter before part {self.part + 2} is followed by "
                f"{got!r} instead of a line break"
            )
        return False

    async def read_headers(self, index: int, max_header_bytes: int) -> dict[str, str]:
        """Read the header block of a part; the cursor is left on its final CRLF."""
        start_offset = 0
        while True:
            buf = self._buf
            h = buf.find(_HEADER_END, self._pos + start_offset)
            if h >= 0:
                break
            available = len(buf) - self._pos
            if available > max_header_bytes:
                raise BadRequest(
                    f"headers of multipart part {index + 1} exceed {max_header_bytes} bytes"
                )
            start_offset = max(0, available - 3)
            if not await self._fill():
                raise BadRequest(f"multipart body ended inside the headers of part {index + 1}")
        if h - self._pos > max_header_bytes:
            raise BadRequest(
                f"headers of multipart part {index + 1} exceed {max_header_bytes} bytes"
            )
        block = buf[self._pos + 2 : h]
        self._pos = h + 2
        self.part = index
        self._done = False
        self._lead = True
        return _parse_headers(block, index)

    async def next_chunk(self) -> bytes | None:
        """Next piece of the current part's body, or ``None`` at its closing delimiter."""
        if self._done:
            return None
        delim = self._delim
        width = len(delim)
        if self._lead:
            if not await self._ensure(width):
                # Fewer bytes remain than a delimiter needs, so the part cannot be closed.
                raise BadRequest("multipart body ended before the closing boundary")
            if self._buf.startswith(delim, self._pos):
                self._done = True
                return None
            self._pos += 2
            self._lead = False
        while True:
            buf = self._buf
            pos = self._pos
            i = buf.find(delim, pos)
            if i >= 0:
                self._pos = i
                self._done = True
                return buf[pos:i] if i > pos else None
            # Hold back only a tail that could be the start of a delimiter split across chunks;
            # in binary data that is almost never, so the whole chunk goes out uncopied.
            end = len(buf)
            keep = end
            j = buf.find(b"\r", max(pos, end - width + 1))
            while j >= 0:
                if buf.endswith(delim[: end - j]):
                    keep = j
                    break
                j = buf.find(b"\r", j + 1)
            if keep > pos:
                self._pos = keep
                return buf if pos == 0 and keep == end else buf[pos:keep]
            if not await self._fill():
                raise BadRequest("multipart body ended before the closing boundary")

    async def skip_body(self) -> None:
        """Discard what the caller left unread of the current part."""
        while not self._done:
            await self.next_chunk()


def _parse_headers(block: bytes, index: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if not block:
        return headers
    last: str | None = None
    for raw in block.decode("latin-1").split("\r\n"):
        if raw[:1] in (" ", "\t") and last is not None:
            # Obsolete line folding (RFC 5322 2.2.3): a continuation of the previous field.
            headers[last] = f"{headers[last]} {raw.strip()}".strip()
            continue
        name, colon, value = raw.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise BadRequest(f"multipart part {index + 1} has a malformed header line {raw!r}")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    return headers


class _PartBody:
    """Async iterator over one part's body; valid until the next part is requested."""

    __slots__ = ("_finished", "_index", "_reader")

    def __init__(self, reader: _Reader, index: int) -> None:
        self._reader = reader
        self._index = index
        self._finished = False

    def __aiter__(self) -> _PartBody:
        return self

    async def __anext__(self) -> bytes:
        if self._finished:
            raise StopAsyncIteration
        if self._reader.part != self._index:
            raise RuntimeError(
                f"body of multipart part {self._index + 1} read after moving to a later part"
            )
        chunk = await self._reader.next_chunk()
        if chunk is None:
            self._finished = True
            raise StopAsyncIteration
        return chunk


async def iter_parts(
    stream: AsyncIterable[bytes],
    boundary: bytes,
    *,
    default_type: str = "",
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> AsyncIterator[tuple[Part, AsyncIterator[bytes]]]:
    """Stream the parts of a multipart/related body (RFC 2046 5.1.1, RFC 2387; PS3.18 10.5).

    Each part is yielded with an async iterator over its body, which the caller consumes (e.g.
    into a spool file) before asking for the next part; whatever it leaves unread is skipped.
    Chunks are ``bytes`` of arbitrary size (as received, or smaller); they never include the CRLF
    that precedes the next delimiter, which RFC 2046 assigns to the delimiter.

    Parameters
    ----------
    stream : AsyncIterable[bytes]
        The request body, e.g. ``request.stream()``.
    boundary : bytes
        From :func:`parse_multipart_content_type`.
    default_type : str
        Content type of parts without a Content-Type header: the multipart ``type`` parameter.
        When empty, :data:`DEFAULT_PART_TYPE` (the STOW-RS part type).
    max_header_bytes : int
        Largest accepted header block of a part.

    Yields
    ------
    tuple[Part, AsyncIterator[bytes]]
        The part's headers and its body.

    Raises
    ------
    BadRequest
        If the body has no delimiter, no part, malformed part headers, or ends before the close
        delimiter (``"multipart body ended before the closing boundary"``).
    """
    if not boundary:
        raise BadRequest("multipart boundary is empty")
    fallback = default_type or DEFAULT_PART_TYPE
    reader = _Reader(stream, boundary)
    await reader.find_first_delimiter()
    index = 0
    while True:
        if await reader.after_delimiter():
            if index == 0:
                raise BadRequest("multipart body has a closing boundary but no parts")
            return
        headers = await reader.read_headers(index, max_header_bytes)
        part = Part(index, headers, headers.get("content-type") or fallback)
        yield part, _PartBody(reader, index)
        await reader.skip_body()
        index += 1


def new_boundary() -> str:
    """A fresh boundary for a multipart response.

    128 random bits make a collision with part content negligible, which RFC 2046 5.1.1 requires
    since the content is not scanned for it.
    """
    return f"nubis-{secrets.token_hex(16)}"


def multipart_related_content_type(
    boundary: str, part_type: str, transfer_syntax: str | None = None
) -> str:
    """Content-Type of a multipart/related response (RFC 2387 3.1; PS3.18 8.7.3.5, 8.7.5).

    Parameters
    ----------
    boundary : str
        From :func:`new_boundary`.
    part_type : str
        Media type of every part, e.g. ``application/dicom``.
    transfer_syntax : str or None
        Transfer syntax UID of every part, sent as the ``transfer-syntax`` parameter. ``None`` and
        ``*`` (parts as stored, possibly differing) omit it; each part then names its own syntax.

    Returns
    -------
    str
        For example ``multipart/related; type="application/dicom";
        transfer-syntax=1.2.840.10008.1.2.1; boundary="nubis-..."``.
    """
    value = f'multipart/related; type="{part_type}"'
    if transfer_syntax and transfer_syntax != "*":
        value += f"; transfer-syntax={transfer_syntax}"
    return f'{value}; boundary="{boundary}"'


def _encode_headers(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
            raise ValueError(f"invalid multipart part header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


def multipart_length(parts: Iterable[tuple[Mapping[str, str], int]], boundary: str) -> int:
    """The length of the body :func:`iter_multipart` encodes from parts of these header
    fields and body sizes (a Content-Length known before the first byte is read)."""
    delimiter = len(boundary) + 2
    total = 0
    started = False
    for headers, size in parts:
        total += (2 + delimiter + 2 if started else delimiter + 2) + len(_encode_headers(headers))
        total += 2 + size
        started = True
    return total + (2 + delimiter + 4 if started else delimiter + 4)


def iter_multipart(
    parts: Iterable[tuple[Mapping[str, str], Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    """Encode a multipart/related body lazily (RFC 2046 5.1.1, RFC 2387; PS3.18 8.7.3.5).

    Parts and their chunks are pulled only when the previous output has been consumed, so a
    response of any size streams with one chunk in memory.

    Parameters
    ----------
    parts : Iterable[tuple[Mapping[str, str], Iterable[bytes]]]
        Each part's header fields (e.g. ``{"Content-Type": "application/dicom"}``) and body
        chunks.
    boundary : str
        The boundary named in the response Content-Type.

    Yields
    ------
    bytes
        The body: no preamble, one encapsulation per part, the close delimiter, a final CRLF.
        With no parts only the close delimiter is produced.
    """
    dash = f"--{boundary}".encode("ascii")
    opening = dash + _CRLF
    between = _CRLF + dash + _CRLF
    started = False
    for headers, chunks in parts:
        yield (between if started else opening) + _encode_headers(headers) + _CRLF
        started = True
        for chunk in chunks:
            # An empty chunk would end a chunked HTTP response early in some servers.
            if chunk:
                yield chunk
    yield (_CRLF + dash + b"--\r\n") if started else (dash + b"--\r\n")
