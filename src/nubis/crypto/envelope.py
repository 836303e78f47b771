"""The encrypted blob format, version 1: a header, then AES-256-GCM segments.

::

    offset  size  field
    0       8     magic b"NUBISENC"
    8       1     version (1)
    9       1     flags (0; readers refuse unknown flags)
    10      4     body offset: where segment 0 starts (header plus zero padding)
    14      4     segment size S: plaintext bytes per segment (the last may be shorter)
    18      8     plaintext size
    26      7     nonce prefix (random per blob)
    33      1+n   KEK id (length, ASCII)
            1+n   patient key id (length, ASCII)
            2+n   wrapped data key (length, bytes)
            ...   zero padding up to the body offset
    body    segment i = AES-256-GCM(DEK, nonce, plaintext[i*S:(i+1)*S]) || 16-byte tag

The nonce of segment i is ``prefix (7) || i (4, big endian) || final (1)``, where ``final`` is 1
only on the last segment (the STREAM construction of Hoang, Reyhanitabar, Rogaway and Vizar):
segments cannot be reordered, dropped or cut off at a segment boundary without a tag failing.
Every blob has a fresh random DEK, so no (key, nonce) pair ever repeats; 2**32 segments of
64 KiB bound a blob at 256 TiB.

The header is authenticated through the key wrap: the associated data of the wrapped DEK is
every fixed header field plus the object's identity (partition, UIDs, SHA-256 of the
plaintext; see :class:`nubis.ports.blobs.BlobContext`). Changing any header field, or reading
the blob as another object's, fails to unwrap the DEK, so nothing is decrypted. The segments'
own associated data is fixed: their bytes are written while the object is still arriving,
before its UIDs are known (the spool, nubis.services.spool), and they are bound to the header
by the DEK, which is unique to this blob.

A byte range decrypts only the segments it covers (:meth:`SegmentKey.read_range`), so a frame of
a 2 GB multi-frame object costs a few 64 KiB decryptions.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nubis.errors import BlobUnreadable
from nubis.ports.keys import WrappedKey
from nubis.ports.reader import PositionedReader

if TYPE_CHECKING:
    from nubis.ports.blobs import BlobContext

__all__ = [
    "HEADER_RESERVE",
    "MAGIC",
    "SEGMENT_SIZE",
    "TAG_SIZE",
    "Header",
    "Seal",
    "SegmentKey",
    "SegmentReader",
    "SegmentWriter",
    "ciphertext_size",
    "parse_header",
]

MAGIC = b"NUBISENC"
VERSION = 1
SEGMENT_SIZE = 64 * 1024
TAG_SIZE = 16
NONCE_PREFIX_SIZE = 7
DEK_SIZE = 32
# Room left at the start of a spool file for the header, written once the object's identity is
# known. 1 KiB holds the local keyring's 60-byte wrapped keys and a cloud KMS's (~200-500 bytes).
HEADER_RESERVE = 1024

_FIXED = struct.Struct(">8sBBIIQ7s")
_MAX_SEGMENTS = 1 << 32
# Associated data of every segment: the format and version, so a segment cannot be taken for
# one of another format that might share the DEK in a later version.
SEGMENT_AAD = b"nubis segment v1"


def segment_count(size: int, segment_size: int) -> int:
    """Segments of a ``size``-byte plaintext: at least one (an empty object is one empty,
    final segment, so even it carries a tag)."""
    return max(1, -(-size // segment_size))


def ciphertext_size(size: int, segment_size: int = SEGMENT_SIZE) -> int:
    """Body bytes (without header) of a ``size``-byte plaintext."""
    return size + segment_count(size, segment_size) * TAG_SIZE


@dataclass(frozen=True)
class SegmentKey:
    """A blob's data key, nonce prefix and segment size: everything needed for its segments."""

    dek: bytes = field(repr=False)  # never print a data key into a log or traceback
    nonce_prefix: bytes
    segment_size: int = SEGMENT_SIZE

    @classmethod
    def new(cls, segment_size: int = SEGMENT_SIZE) -> SegmentKey:
        # The prefix adds nothing to nonce uniqueness (the DEK is fresh); it keeps two blobs'
        # nonce sequences apart should a DEK generator ever fail.
        return cls(os.urandom(DEK_SIZE), os.urandom(NONCE_PREFIX_SIZE), segment_size)

    def nonce(self, index: int, final: bool) -> bytes:
        return self.nonce_prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")

    def cipher(self) -> AESGCM:
        return AESGCM(self.dek)


@dataclass(frozen=True)
class Seal:
    """How a sealed spool file was encrypted (nubis.services.spool): its data key, held only in
    memory, and where its body starts (after the room left for the header)."""

    key: SegmentKey
    body_offset: int = HEADER_RESERVE


@dataclass(frozen=True)
class Header:
    """A parsed header; nothing in it is trusted until its wrapped key has been unwrapped."""

    body_offset: int
    segment_size: int
    plaintext_size: int
    nonce_prefix: bytes
    wrapped: WrappedKey | None

    def fixed_fields(self) -> bytes:
        """The fixed header fields, authenticated as associated data of the key wrap (the key
        provider authenticates the key ids itself)."""
        return _FIXED.pack(
            MAGIC,
            VERSION,
            0,
            self.body_offset,
            self.segment_size,
            self.plaintext_size,
            self.nonce_prefix,
        )

    def associated_data(self, context: BlobContext) -> bytes:
        """What the wrapped DEK is bound to: this header's fixed fields and the object."""
        return b"nubis blob v1\x00" + self.fixed_fields() + context.associated_data()

    def with_wrapped(self, wrapped: WrappedKey) -> Header:
        return replace(self, wrapped=wrapped)

    def encode_prefix(self) -> bytes:
        """The header without its padding."""
        if self.wrapped is None:
            raise ValueError("header has no wrapped key yet")
        w = self.wrapped
        return (
            self.fixed_fields()
            + _short(w.key_id)
            + _short(w.subject)
            + struct.pack(">H", len(w.ciphertext))
            + w.ciphertext
        )

    def encode(self) -> bytes:
        """The header, zero-padded to the body offset; ValueError if it does not fit."""
        data = self.encode_prefix()
        if len(data) > self.body_offset:
            raise ValueError(f"header of {len(data)} bytes exceeds body offset {self.body_offset}")
        return data + bytes(self.body_offset - len(data))

    def segment_key(self, dek: bytes) -> SegmentKey:
        return SegmentKey(dek, self.nonce_prefix, self.segment_size)


def _short(text: str) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > 255:
        raise ValueError("key ids are at most 255 ASCII bytes")
    return bytes((len(raw),)) + raw


def is_encrypted(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


def parse_header(data: bytes) -> Header:
    """Parse a header from the first bytes of a blob (at least the body offset of them).

    Raises
    ------
    BlobUnreadable
        Not an encrypted blob, an unknown version or flags, or a malformed header.
    ValueError
        ``data`` is shorter than the header claims; read the body offset's worth and retry.
    """
    if len(data) < _FIXED.size:
        raise BlobUnreadable("stored object is not an encrypted blob (too short)")
    magic, version, flags, body_offset, segment_size, size, prefix = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise BlobUnreadable("stored object is not an encrypted blob")
    if version != VERSION or flags != 0:
        raise BlobUnreadable(
            f"stored object is in encrypted format {version} (flags {flags}), "
            f"which this version of nubis cannot read"
        )
    if not 0 < segment_size <= 1 << 30 or segment_count(size, segment_size) > _MAX_SEGMENTS:
        raise BlobUnreadable("stored object has a malformed encryption header")
    if len(data) < body_offset:
        raise ValueError(body_offset)
    try:
        pos = _FIXED.size
        key_id, pos = _read_short(data, pos)
        subject, pos = _read_short(data, pos)
        (length,) = struct.unpack_from(">H", data, pos)
        wrapped = bytes(data[pos + 2 : pos + 2 + length])
        if pos + 2 + length > body_offset or len(wrapped) != length:
            raise ValueError("wrapped key overruns the header")
    except (struct.error, ValueError, UnicodeDecodeError):
        raise BlobUnreadable("stored object has a malformed encryption header") from None
    return Header(body_offset, segment_size, size, prefix, WrappedKey(key_id, subject, wrapped))


def _read_short(data: bytes, pos: int) -> tuple[str, int]:
    length = data[pos]
    raw = bytes(data[pos + 1 : pos + 1 + length])
    if len(raw) != length:
        raise ValueError("truncated")
    return raw.decode("ascii"), pos + 1 + length


def _tampered(what: str = "") -> BlobUnreadable:
    detail = f" ({what})" if what else ""
    return BlobUnreadable(
        f"stored object failed its integrity check{detail}: it was altered, truncated, or is "
        "not the object it is stored as"
    )


class SegmentWriter:
    """Encrypt a stream into segments as it arrives; ``finish()`` seals the final segment.

    A full segment is held back until more bytes come, because only then is it known not to be
    the last (the last one carries the final flag, even when the size is a multiple of S).
    """

    def __init__(self, key: SegmentKey, sink: Callable[[bytes], object]) -> None:
        self._key = key
        self._cipher = key.cipher()
        self._sink = sink
        self._buffer = bytearray()
        self._index = 0
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        seg = self._key.segment_size
        view = memoryview(data)
        if self._buffer:
            # Top the held-back bytes up to one segment; emit it only if more bytes follow.
            take = min(len(view), seg - len(self._buffer)) if len(self._buffer) < seg else 0
            self._buffer += view[:take]
            view = view[take:]
            if not view:
                return
            self._emit(self._buffer, final=False)
            self._buffer = bytearray()
        # Encrypt straight from the caller's buffer, keeping back at least one byte (see the
        # class docstring): no copy of the plaintext but the held-back tail.
        full = (len(view) - 1) // seg if view else 0
        for i in range(full):
            self._emit(view[i * seg : (i + 1) * seg], final=False)
        self._buffer = bytearray(view[full * seg :])

    def finish(self) -> int:
        """Write the final segment; returns the plaintext size."""
        self._emit(bytes(self._buffer), final=True)
        self._buffer = bytearray()
        return self.size

    def _emit(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> None:
        if self._index >= _MAX_SEGMENTS:
            raise ValueError("object too large for one encrypted blob")
        nonce = self._key.nonce(self._index, final)
        self._sink(self._cipher.encrypt(nonce, plaintext, SEGMENT_AAD))
        self._index += 1


def encrypt_stream(
    key: SegmentKey, chunks: Iterable[bytes], sink: Callable[[bytes], object]
) -> int:
    writer = SegmentWriter(key, sink)
    for chunk in chunks:
        writer.write(chunk)
    return writer.finish()


class SegmentReader(PositionedReader):
    """A seekable, read-only view of the plaintext of an encrypted body.

    ``source`` is a seekable binary file positioned anywhere; segments are read and decrypted
    on demand, and the last one is kept, so pydicom's many small reads cost one decryption per
    64 KiB. Wrap it in :class:`io.BufferedReader` for speed on small reads (see :func:`open_plain`).
    A segment that fails its tag raises :class:`BlobUnreadable`: no unauthenticated byte is
    ever returned.
    """

    def __init__(
        self,
        source: BinaryIO,
        key: SegmentKey,
        *,
        body_offset: int,
        size: int,
        name: str = "<encrypted blob>",
    ) -> None:
        super().__init__()
        self._source = source
        self._key = key
        self._cipher = key.cipher()
        self._body_offset = body_offset
        self._size = size
        self._count = segment_count(size, key.segment_size)
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None
        # pydicom and nubis.dicom.inspect read .name; never a path or anything about the object.
        self.name = name

    @property
    def size(self) -> int:
        return self._size

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        seg = self._key.segment_size
        index = self._pos // seg
        plain = self._segment(index)
        start = self._pos - index * seg
        n = min(len(buffer), len(plain) - start)
        buffer[:n] = plain[start : start + n]
        self._pos += n
        return n

    def read_range(self, start: int, length: int | None = None) -> bytes:
        """Plaintext ``[start, start + length)``, decrypting only the segments it covers."""
        end = self._size if length is None else min(self._size, start + length)
        if start >= end:
            return b""
        return b"".join(self.iter_range(start, end - start))

    def iter_range(self, start: int, length: int, batch: int = 16) -> Iterator[bytes]:
        """Plaintext of a range, ``batch`` segments per read of the source (streaming)."""
        end = min(self._size, start + length)
        seg = self._key.segment_size
        index, last = start // seg, (end - 1) // seg
        while start < end and index <= last:
            upto = min(last, index + batch - 1)
            plains = self._segments(index, upto)
            joined = plains[0] if len(plains) == 1 else b"".join(plains)
            base = index * seg
            yield joined[start - base : min(end, base + len(joined)) - base]
            start = base + len(joined)
            index = upto + 1

    def _segment(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        plain = self._segments(index, index)[0]
        self._cached = (index, plain)
        return plain

    def _segments(self, first: int, last: int) -> list[bytes]:
        seg = self._key.segment_size
        stride = seg + TAG_SIZE
        self._source.seek(self._body_offset + first * stride)
        want = min(self._size + self._count * TAG_SIZE, (last + 1) * stride) - first * stride
        data = _read_exactly(self._source, want)
        if len(data) != want:
            raise _tampered("truncated")
        out = []
        view = memoryview(data)
        for i in range(first, last + 1):
            piece = view[(i - first) * stride : (i - first + 1) * stride]
            try:
                plain = self._cipher.decrypt(
                    self._key.nonce(i, i == self._count - 1), piece, SEGMENT_AAD
                )
            except InvalidTag:
                raise _tampered() from None
            out.append(plain)
        return out

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()


def _read_exactly(source: BinaryIO, want: int) -> bytes:
    data = source.read(want)
    if len(data) == want or not data:
        return data
    parts = [data]
    got = len(data)
    while got < want:
        more = source.read(want - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def open_plain(reader: SegmentReader, buffer_size: int = SEGMENT_SIZE) -> io.BufferedReader:
    """A buffered file object over ``reader`` for parsers that read a few bytes at a time."""
    return io.BufferedReader(reader, buffer_size=buffer_size)


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes | memoryview]:
    """Regroup a byte stream into pieces of exactly ``size`` bytes (the last may be shorter).

    Pieces are views into the incoming chunks where they align (a file store reading whole
    batches of segments), so the common case copies nothing.
    """
    pending = bytearray()
    for chunk in chunks:
        view = memoryview(chunk)
        if pending:
            take = min(len(view), size - len(pending))
            pending += view[:take]
            view = view[take:]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending = bytearray()
        whole = len(view) // size
        for i in range(whole):
            yield view[i * size : (i + 1) * size]
        pending += view[whole * size :]
    if pending:
        yield bytes(pending)


def decrypt_stream(
    key: SegmentKey, size: int, chunks: Iterable[bytes], batch: int = 16
) -> Iterator[bytes]:
    """Decrypt a whole body given as a stream of ciphertext, ``batch`` segments per yield.

    The final flag and the segment count come from ``size`` (authenticated by the key wrap):
    a body that ends early or runs on raises :class:`BlobUnreadable` before the plaintext of
    the last segment is released.
    """
    cipher = key.cipher()
    count = segment_count(size, key.segment_size)
    stride = key.segment_size + TAG_SIZE
    index = 0
    out: list[bytes] = []
    for piece in rechunk(chunks, stride):
        if index >= count:
            raise _tampered("extra bytes")
        final = index == count - 1
        try:
            out.append(cipher.decrypt(key.nonce(index, final), piece, SEGMENT_AAD))
        except InvalidTag:
            raise _tampered() from None
        index += 1
        if len(out) >= batch:
            yield b"".join(out)
            out = []
    if index != count:
        raise _tampered("truncated")
    if out:
        yield b"".join(out)
