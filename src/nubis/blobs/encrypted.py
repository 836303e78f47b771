"""Encryption at rest: a blob store wrapper that encrypts every blob under its own data key.

``EncryptedBlobStore(inner, keys)`` speaks the same :class:`~nubis.ports.blobs.BlobStore`
protocol as the store it wraps, so services and front doors do not know blobs are encrypted.
Each blob is envelope-encrypted (format: nubis.crypto.envelope): a fresh AES-256 data key (DEK)
encrypts the object in 64 KiB AES-GCM segments; the DEK is wrapped by the key provider
(nubis.ports.keys) under the current KEK and the patient's key, with the object's identity
(partition, UIDs, SHA-256) as associated data. Reads decrypt only the segments a range covers.

Puts take a *sealed* spool file as it is (its segments were encrypted as the bytes arrived,
nubis.services.spool): the header is written into the room the spool left for it and the inner
store adopts the file, so encryption adds no write. A plaintext source (a spool that was not
sealed) is encrypted into a new file beside it first.

With ``accept_plaintext`` (an archive whose ``encrypt_at_rest`` was turned off after it held
encrypted blobs), blobs without the encrypted header are served as they are and new blobs are
written in plaintext; otherwise a plaintext blob is refused as unreadable, so nobody can slip
an unencrypted object in place of an encrypted one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from nubis.crypto.envelope import (
    HEADER_RESERVE,
    SEGMENT_SIZE,
    TAG_SIZE,
    Header,
    Seal,
    SegmentKey,
    SegmentReader,
    SegmentWriter,
    decrypt_stream,
    is_encrypted,
    open_plain,
    parse_header,
)
from nubis.errors import BlobUnreadable
from nubis.ports.blobs import (
    BlobCapabilities,
    BlobContext,
    BlobInfo,
    BlobStore,
    LocalFile,
    PlainFile,
)
from nubis.ports.keys import KeyProvider, WrappedKey

__all__ = ["EncryptedBlobStore"]

log = logging.getLogger(__name__)


class EncryptedBlobStore:
    """Envelope-encrypt every blob of ``inner`` with keys from ``keys``.

    Parameters
    ----------
    inner : BlobStore
        Where the ciphertext goes (file folder, S3...).
    keys : KeyProvider
        Wraps and unwraps data keys (a local keyring by default).
    segment_size : int
        Plaintext bytes per AES-GCM segment of blobs encrypted here from plaintext sources
        (sealed spool files carry their own).
    accept_plaintext : bool
        Write new blobs in plaintext and read blobs that are not encrypted (see the module
        docstring); encrypted blobs are always decrypted.
    """

    def __init__(
        self,
        inner: BlobStore,
        keys: KeyProvider,
        *,
        segment_size: int = SEGMENT_SIZE,
        accept_plaintext: bool = False,
    ) -> None:
        self.inner = inner
        self.keys = keys
        self.segment_size = segment_size
        self.accept_plaintext = accept_plaintext
        self.capabilities = BlobCapabilities(
            adopts_local_files=inner.capabilities.adopts_local_files,
            range_reads=True,
            authenticated_reads=True,
            remote=inner.capabilities.remote,
        )

    def new_key(self) -> str:
        return self.inner.new_key()

    # ------------------------------------------------------------------ writes
    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        seal = source.seal
        if seal is None and self.accept_plaintext:
            self.inner.put_file(key, source, context=context)
            return
        if isinstance(seal, Seal):
            header = self._header(seal, source.size, context)
            if len(header.encode_prefix()) <= seal.body_offset:
                fd = os.open(source.path, os.O_WRONLY)
                try:
                    os.pwrite(fd, header.encode(), 0)
                finally:
                    os.close(fd)
                # The inner store fsyncs the whole file (header included) before adopting it.
                self.inner.put_file(key, PlainFile(source.path, source.size), context=context)
                return
        self._put_by_copy(key, source, context)

    def _put_by_copy(self, key: str, source: LocalFile, context: BlobContext) -> None:
        """Encrypt a plaintext source (or a sealed one whose header would not fit) afresh."""
        seal = Seal(SegmentKey.new(self.segment_size), HEADER_RESERVE)
        header = self._header(seal, source.size, context)
        prefix_len = len(header.encode_prefix())
        if prefix_len > seal.body_offset:  # a provider with very large wrapped keys
            seal = Seal(seal.key, -(-prefix_len // 512) * 512)
            header = self._header(seal, source.size, context)
        target = source.path.with_name(source.path.name + ".enc")
        try:
            with source.open() as plain, open(target, "xb") as out:
                out.write(header.encode())
                writer = SegmentWriter(seal.key, out.write)
                while chunk := plain.read(1 << 20):
                    writer.write(chunk)
                if writer.finish() != source.size:
                    raise OSError("the source changed size while it was encrypted")
            self.inner.put_file(key, PlainFile(target, os.path.getsize(target)), context=context)
        finally:
            Path(target).unlink(missing_ok=True)
        source.path.unlink(missing_ok=True)

    def _header(self, seal: Seal, size: int, context: BlobContext) -> Header:
        draft = Header(seal.body_offset, seal.key.segment_size, size, seal.key.nonce_prefix, None)
        wrapped = self.keys.wrap(
            seal.key.dek,
            partition=context.partition,
            patient_id=context.patient_id or "",
            aad=draft.associated_data(context),
        )
        return draft.with_wrapped(wrapped)

    # ------------------------------------------------------------------ reads
    def read(
        self, key: str, start: int = 0, length: int | None = None, *, context: BlobContext
    ) -> bytes:
        with self.inner.open(key, context=context) as f:
            reader = self._reader(f, context)
            if reader is None:
                f.seek(start)
                return f.read() if length is None else f.read(length)
            return reader.read_range(start, length)

    def iter_chunks(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = 1 << 20,
        *,
        context: BlobContext,
    ) -> Iterator[bytes]:
        # Open, parse the header and unwrap the key now, so a missing blob or key, or a blob
        # under the wrong object, fails before a response starts.
        if not self.inner.capabilities.remote:
            return self._iter_local(key, start, length, chunk_size, context)
        prefix = self.inner.read(key, 0, HEADER_RESERVE, context=context)
        if not is_encrypted(prefix):
            self._plaintext_allowed(key)
            return self.inner.iter_chunks(key, start, length, chunk_size, context=context)
        header, dek = self._open_header(key, prefix, context)
        seg_key = header.segment_key(dek)
        # Segments decrypt whole: decrypt about chunk_size's worth at a time (at least one
        # segment), then cut to chunk_size, so a caller's chunk size bounds what it is handed.
        batch = max(1, chunk_size // header.segment_size)
        if start == 0 and length is None:
            body = self.inner.iter_chunks(
                key,
                header.body_offset,
                None,
                batch * (header.segment_size + TAG_SIZE),
                context=context,
            )
            plain = decrypt_stream(seg_key, header.plaintext_size, body, batch)
            return _cut(plain, chunk_size)
        f = self.inner.open(key, context=context)
        reader = SegmentReader(
            f, seg_key, body_offset=header.body_offset, size=header.plaintext_size
        )
        end = header.plaintext_size if length is None else start + length
        return _closing(
            reader, _cut(reader.iter_range(start, max(0, end - start), batch), chunk_size)
        )

    def _iter_local(
        self, key: str, start: int, length: int | None, chunk_size: int, context: BlobContext
    ) -> Iterator[bytes]:
        """:meth:`iter_chunks` of a local file: one open for the header and the body (a
        remote store streams the body with a request of its own instead)."""
        f = self.inner.open(key, context=context)
        try:
            prefix = f.read(HEADER_RESERVE)
            if not is_encrypted(prefix):
                self._plaintext_allowed(key)
                end = None if length is None else start + length
                return _file_chunks(f, start, end, chunk_size)
            header, dek = self._open_header(key, prefix, context, f)
        except BaseException:
            f.close()
            raise
        seg_key = header.segment_key(dek)
        batch = max(1, chunk_size // header.segment_size)
        if start == 0 and length is None:
            body = _file_chunks(
                f, header.body_offset, None, batch * (header.segment_size + TAG_SIZE)
            )
            return _cut(decrypt_stream(seg_key, header.plaintext_size, body, batch), chunk_size)
        reader = SegmentReader(
            f, seg_key, body_offset=header.body_offset, size=header.plaintext_size
        )
        end = header.plaintext_size if length is None else start + length
        return _closing(
            reader, _cut(reader.iter_range(start, max(0, end - start), batch), chunk_size)
        )

    def open(self, key: str, *, context: BlobContext) -> BinaryIO:
        f = self.inner.open(key, context=context)
        try:
            reader = self._reader(f, context)
        except BaseException:
            f.close()
            raise
        if reader is None:
            f.seek(0)
            return f
        return open_plain(reader)

    def _reader(self, f: BinaryIO, context: BlobContext) -> SegmentReader | None:
        """A decrypting reader over the open blob ``f``; None for an accepted plaintext blob."""
        f.seek(0)
        prefix = f.read(HEADER_RESERVE)
        if not is_encrypted(prefix):
            self._plaintext_allowed("(open)")
            return None
        header, dek = self._open_header(None, prefix, context, f)
        return SegmentReader(
            f, header.segment_key(dek), body_offset=header.body_offset, size=header.plaintext_size
        )

    def wrapped_key(self, key: str, *, context: BlobContext) -> WrappedKey | None:
        """The names of the keys the blob's header says wrap its DEK (KEK version, patient key),
        read without unwrapping anything; None for a plaintext blob. For KEK retirement."""
        prefix = self.inner.read(key, 0, HEADER_RESERVE, context=context)
        if not is_encrypted(prefix):
            return None
        return self._parse_header(key, prefix, context).wrapped

    def _open_header(
        self, key: str | None, prefix: bytes, context: BlobContext, f: BinaryIO | None = None
    ) -> tuple[Header, bytes]:
        header = self._parse_header(key, prefix, context, f)
        if header.wrapped is None:  # a stored header always has one (parse_header reads it)
            raise BlobUnreadable("stored object failed its integrity check: no wrapped key")
        dek = self.keys.unwrap(header.wrapped, aad=header.associated_data(context))
        return header, dek

    def _parse_header(
        self, key: str | None, prefix: bytes, context: BlobContext, f: BinaryIO | None = None
    ) -> Header:
        try:
            return parse_header(prefix)
        except ValueError as exc:  # the header is longer than the first read
            body_offset = int(exc.args[0])
            if f is not None:
                f.seek(0)
                prefix = f.read(body_offset)
            else:
                assert key is not None
                prefix = self.inner.read(key, 0, body_offset, context=context)
            return parse_header(prefix)

    def _plaintext_allowed(self, key: str) -> None:
        if not self.accept_plaintext:
            log.error("blob %s is not encrypted; refused (encrypt_at_rest is on)", key)
            raise BlobUnreadable(
                "stored object failed its integrity check: it is not encrypted, and this "
                "archive encrypts every object"
            )

    # ------------------------------------------------------------------ the rest
    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self) -> Iterator[BlobInfo]:
        """The inner store's listing: sizes are stored bytes (header and tags included).

        The object's own size is the index's (and every header's). Deriving it here would
        cost a header read per blob (a GET per object on S3, for a reaper that needs only keys
        and times), or arithmetic that is wrong for plaintext blobs kept under
        ``accept_plaintext`` and for headers that outgrew their reserve.
        """
        return self.inner.list()


def _cut(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """``chunks`` in pieces of at most ``size`` bytes, none empty."""
    for chunk in chunks:
        if len(chunk) <= size:
            if chunk:
                yield chunk
            continue
        view = memoryview(chunk)
        for at in range(0, len(chunk), size):
            yield bytes(view[at : at + size])


def _file_chunks(f: BinaryIO, start: int, end: int | None, chunk_size: int) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of ``f`` (to its end when None) in chunks; closes ``f``."""
    with f:
        f.seek(start)
        at = start
        while end is None or at < end:
            chunk = f.read(chunk_size if end is None else min(chunk_size, end - at))
            if not chunk:
                return
            at += len(chunk)
            yield chunk


def _closing(reader: SegmentReader, chunks: Iterator[bytes]) -> Iterator[bytes]:
    with reader:
        yield from chunks
