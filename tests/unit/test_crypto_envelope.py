"""The encrypted blob format: segment round trips, ranged reads, and every kind of tampering."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.blobs.filesystem import FileBlobStore
from nubis.crypto.envelope import (
    HEADER_RESERVE,
    SEGMENT_SIZE,
    TAG_SIZE,
    SegmentKey,
    SegmentReader,
    SegmentWriter,
    ciphertext_size,
    decrypt_stream,
    parse_header,
)
from nubis.crypto.local_keys import LocalKeyring
from nubis.errors import BlobUnreadable
from nubis.ports.blobs import BlobContext, PlainFile
from nubis.services.spool import Spool

S = SEGMENT_SIZE
SIZES = [0, 1, S - 1, S, S + 1, 2 * S, 3 * S + 5]


def _context(sop: str = "1.2.3.4.1", sha: str = "ab" * 32, patient: str = "PAT-1") -> BlobContext:
    return BlobContext("default", "1.2.3", "1.2.3.4", sop, sha, patient_id=patient)


def _encrypt(key: SegmentKey, data: bytes, piece: int = 7919) -> bytes:
    out = io.BytesIO()
    writer = SegmentWriter(key, out.write)
    for i in range(0, len(data), piece):
        writer.write(data[i : i + piece])
    assert writer.finish() == len(data)
    return out.getvalue()


@pytest.mark.parametrize("piece", [7919, S, 3 * S + 1])
@pytest.mark.parametrize("size", SIZES)
def test_segments_round_trip_around_boundaries(size: int, piece: int) -> None:
    key = SegmentKey.new()
    data = os.urandom(size)
    body = _encrypt(key, data, piece)
    assert len(body) == ciphertext_size(size)
    for step in (1000, S + TAG_SIZE, 2 * (S + TAG_SIZE) + 7):
        pieces = [body[i : i + step] for i in range(0, len(body), step)]
        assert b"".join(decrypt_stream(key, size, pieces)) == data
    reader = SegmentReader(io.BytesIO(body), key, body_offset=0, size=size)
    assert reader.read_range(0) == data
    for start, length in [(0, 1), (S - 3, 7), (S, S), (size // 2, S + 10), (size, 4)]:
        assert reader.read_range(start, length) == data[start : start + length]
        assert b"".join(reader.iter_range(start, length, batch=2)) == data[start : start + length]


def test_no_nonce_repeats_within_or_across_blobs() -> None:
    a, b = SegmentKey.new(), SegmentKey.new()
    assert a.dek != b.dek
    nonces = {a.nonce(i, i == 9) for i in range(10)}
    assert len(nonces) == 10
    assert a.nonce(3, False) != a.nonce(3, True)


def test_segment_tampering_is_detected() -> None:
    key = SegmentKey.new()
    data = os.urandom(3 * S + 5)
    body = bytearray(_encrypt(key, data))
    for position in (10, S + TAG_SIZE - 1, len(body) - 1):  # a data byte, a tag byte, last tag
        bad = bytearray(body)
        bad[position] ^= 1
        with pytest.raises(BlobUnreadable):
            b"".join(decrypt_stream(key, len(data), [bytes(bad)]))
        with pytest.raises(BlobUnreadable):
            SegmentReader(io.BytesIO(bytes(bad)), key, body_offset=0, size=len(data)).read_range(
                (position // (S + TAG_SIZE)) * S, 1
            )


def test_truncation_reordering_and_extension_are_detected() -> None:
    key = SegmentKey.new()
    data = os.urandom(3 * S)
    body = _encrypt(key, data)
    stride = S + TAG_SIZE
    segments = [body[i : i + stride] for i in range(0, len(body), stride)]
    # Cut at a segment boundary: the new last segment lacks the final flag.
    with pytest.raises(BlobUnreadable):
        b"".join(decrypt_stream(key, 2 * S, [b"".join(segments[:2])]))
    with pytest.raises(BlobUnreadable):
        b"".join(decrypt_stream(key, len(data), [b"".join(segments[:2])]))
    swapped = segments[1] + segments[0] + segments[2]
    with pytest.raises(BlobUnreadable):
        b"".join(decrypt_stream(key, len(data), [swapped]))
    with pytest.raises(BlobUnreadable):
        b"".join(decrypt_stream(key, len(data), [body + segments[2]]))
    with pytest.raises(BlobUnreadable):
        SegmentReader(io.BytesIO(body[:-5]), key, body_offset=0, size=len(data)).read_range(
            len(data) - 1, 1
        )


# ---------------------------------------------------------------------- the blob store


@pytest.fixture
def store(tmp_path: Path) -> EncryptedBlobStore:
    keys = LocalKeyring(tmp_path / "keyring.jsonl", durable=False)
    return EncryptedBlobStore(FileBlobStore(tmp_path / "blobs", durable=False), keys)


def _put_spooled(store: EncryptedBlobStore, tmp_path: Path, data: bytes, ctx: BlobContext) -> str:
    spool = Spool(tmp_path / "spool", sealed=True)
    writer = spool.writer()
    for i in range(0, len(data), 5000):
        writer.write(data[i : i + 5000])
    spooled = writer.finish()
    assert spooled.open().read() == data
    key = store.new_key()
    store.put_file(key, spooled, context=ctx)
    assert not spooled.path.exists()
    return key


def _blob(store: EncryptedBlobStore, key: str) -> Path:
    inner = store.inner
    assert isinstance(inner, FileBlobStore)
    return inner.root / key[:2] / key[2:4] / key


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("source", ["sealed spool", "plain file"])
def test_store_round_trip(
    store: EncryptedBlobStore, tmp_path: Path, size: int, source: str
) -> None:
    data = os.urandom(size)
    ctx = _context()
    if source == "sealed spool":
        key = _put_spooled(store, tmp_path, data, ctx)
    else:
        path = tmp_path / "plain"
        path.write_bytes(data)
        key = store.new_key()
        store.put_file(key, PlainFile(path, size), context=ctx)
        assert not path.exists()
    assert _blob(store, key).stat().st_size == HEADER_RESERVE + ciphertext_size(size)
    assert b"".join(store.iter_chunks(key, context=ctx)) == data
    assert store.read(key, context=ctx) == data
    for start, length in [(0, 132), (S - 1, 2), (size // 3, S + 7), (size - 1, 10)]:
        start = max(0, start)
        assert store.read(key, start, length, context=ctx) == data[start : start + length]
        chunks = store.iter_chunks(key, start, length, chunk_size=1000, context=ctx)
        assert b"".join(chunks) == data[start : start + length]
    with store.open(key, context=ctx) as f:
        f.seek(size // 2)
        assert f.read(300) == data[size // 2 : size // 2 + 300]
        f.seek(0)
        assert f.read() == data


def test_header_names_key_and_binds_identity(store: EncryptedBlobStore, tmp_path: Path) -> None:
    key = _put_spooled(store, tmp_path, os.urandom(1000), _context())
    header = parse_header(_blob(store, key).read_bytes()[:HEADER_RESERVE])
    assert header.wrapped is not None
    assert header.wrapped.key_id == "k1"
    assert header.plaintext_size == 1000 and header.segment_size == S
    assert b"PAT-1" not in _blob(store, key).read_bytes()


@pytest.mark.parametrize(
    "other",
    [
        _context(sop="1.2.3.4.2"),  # moved under another instance
        BlobContext("other", "1.2.3", "1.2.3.4", "1.2.3.4.1", "ab" * 32),  # another partition
        BlobContext("default", "1.2.9", "1.2.3.4", "1.2.3.4.1", "ab" * 32),  # another study
        BlobContext("default", "1.2.3", "1.2.9.4", "1.2.3.4.1", "ab" * 32),  # another series
        _context(sha="cd" * 32),  # another version of the object
    ],
)
def test_blob_read_as_another_object_fails(
    store: EncryptedBlobStore, tmp_path: Path, other: BlobContext
) -> None:
    key = _put_spooled(store, tmp_path, os.urandom(2 * S), _context())
    with pytest.raises(BlobUnreadable):
        store.read(key, context=other)
    with pytest.raises(BlobUnreadable):
        store.iter_chunks(key, context=other)
    with pytest.raises(BlobUnreadable):
        store.open(key, context=other)


def test_blob_file_swapped_under_another_key_fails(
    store: EncryptedBlobStore, tmp_path: Path
) -> None:
    ctx_a, ctx_b = _context("1.2.3.4.1"), _context("1.2.3.4.2")
    a = _put_spooled(store, tmp_path, b"A" * 5000, ctx_a)
    b = _put_spooled(store, tmp_path, b"B" * 5000, ctx_b)
    _blob(store, a).write_bytes(_blob(store, b).read_bytes())
    with pytest.raises(BlobUnreadable):
        store.read(a, context=ctx_a)
    # Header of a with the body of b: a's DEK does not open b's segments.
    store2 = _put_spooled(store, tmp_path, b"C" * 5000, ctx_a)
    data_c = _blob(store, store2).read_bytes()
    data_b = _blob(store, b).read_bytes()
    _blob(store, store2).write_bytes(data_c[:HEADER_RESERVE] + data_b[HEADER_RESERVE:])
    with pytest.raises(BlobUnreadable):
        store.read(store2, context=ctx_a)


def _field_offsets() -> dict[str, int]:
    # Offsets of the fixed fields (see the format table in nubis.crypto.envelope).
    return {
        "magic": 0,
        "version": 8,
        "flags": 9,
        "body offset": 13,
        "segment size": 17,
        "plaintext size": 25,
        "nonce prefix": 26,
        "key id": 34,
        "patient key id": 37,
    }


@pytest.mark.parametrize("field", list(_field_offsets()))
def test_header_tampering_is_detected(
    store: EncryptedBlobStore, tmp_path: Path, field: str
) -> None:
    ctx = _context()
    key = _put_spooled(store, tmp_path, os.urandom(S + 10), ctx)
    path = _blob(store, key)
    data = bytearray(path.read_bytes())
    data[_field_offsets()[field]] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(Exception) as info:
        store.read(key, context=ctx)
    # Unreadable (500) or, for a changed key id, a key that does not exist (424): never bytes.
    assert type(info.value).__name__ in {"BlobUnreadable", "KeyUnavailable"}


def test_wrapped_key_and_segment_tampering_is_detected(
    store: EncryptedBlobStore, tmp_path: Path
) -> None:
    ctx = _context()
    data = os.urandom(2 * S)
    key = _put_spooled(store, tmp_path, data, ctx)
    path = _blob(store, key)
    original = path.read_bytes()
    header = parse_header(original[:HEADER_RESERVE])
    assert header.wrapped is not None
    wrapped_at = original.index(header.wrapped.ciphertext)
    for position in (wrapped_at + 5, HEADER_RESERVE + 3, HEADER_RESERVE + S + TAG_SIZE + 2):
        bad = bytearray(original)
        bad[position] ^= 0x80
        path.write_bytes(bytes(bad))
        with pytest.raises(BlobUnreadable):
            b"".join(store.iter_chunks(key, context=ctx))
    # The first segment intact, the second tampered: a range over the first still reads.
    assert store.read(key, 0, 100, context=ctx) == data[:100]
    path.write_bytes(original[: HEADER_RESERVE + S + TAG_SIZE])  # cut after segment 0
    with pytest.raises(BlobUnreadable):
        b"".join(store.iter_chunks(key, context=ctx))
    with pytest.raises(BlobUnreadable):
        store.read(key, S, 10, context=ctx)


def test_unknown_version_and_plaintext_blobs_are_refused(
    store: EncryptedBlobStore, tmp_path: Path
) -> None:
    ctx = _context()
    key = _put_spooled(store, tmp_path, b"x" * 100, ctx)
    path = _blob(store, key)
    data = bytearray(path.read_bytes())
    data[8] = 2
    path.write_bytes(bytes(data))
    with pytest.raises(BlobUnreadable, match="format 2"):
        store.read(key, context=ctx)
    path.write_bytes(b"\0" * 128 + b"DICM plaintext put in place of an encrypted blob")
    with pytest.raises(BlobUnreadable, match="not encrypted"):
        store.read(key, context=ctx)


def test_accept_plaintext_reads_both_and_writes_plaintext(tmp_path: Path) -> None:
    keys = LocalKeyring(tmp_path / "keyring.jsonl", durable=False)
    inner = FileBlobStore(tmp_path / "blobs", durable=False)
    strict = EncryptedBlobStore(inner, keys)
    ctx = _context()
    encrypted = _put_spooled(strict, tmp_path, b"secret" * 100, ctx)
    lenient = EncryptedBlobStore(inner, keys, accept_plaintext=True)
    path = tmp_path / "plain"
    path.write_bytes(b"plain" * 100)
    plain = lenient.new_key()
    lenient.put_file(plain, PlainFile(path, 500), context=ctx)
    assert (inner.root / plain[:2] / plain[2:4] / plain).read_bytes() == b"plain" * 100
    assert lenient.read(plain, context=ctx) == b"plain" * 100
    assert lenient.read(encrypted, context=ctx) == b"secret" * 100
    with lenient.open(plain, context=ctx) as f:
        assert f.read(5) == b"plain"


def test_plain_store_refuses_a_sealed_spool_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", sealed=True)
    with spool.writer() as writer:
        writer.write(b"data")
        spooled = writer.finish()
    with pytest.raises(ValueError, match="encrypted blob store"):
        FileBlobStore(tmp_path / "blobs").put_file("ab" * 16, spooled, context=_context())


def test_sealed_spool_file_holds_no_plaintext(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", sealed=True)
    data = b"Doe^Jane " * 20000
    with spool.writer() as writer:
        writer.write(data)
        on_disk = writer.path.read_bytes()  # mid-write: the held-back segment is not there yet
        spooled = writer.finish()
    assert b"Doe^Jane" not in on_disk
    assert b"Doe^Jane" not in spooled.path.read_bytes()
    assert "dek=" not in repr(spooled)  # the data key never reaches a log
    assert spooled.open().read() == data


def test_header_parses_what_it_encodes() -> None:
    from nubis.crypto.envelope import Header
    from nubis.ports.keys import WrappedKey

    header = Header(1024, S, 123456, b"\x01" * 7, WrappedKey("k7", "ab" * 16, b"\x05" * 60))
    encoded = header.encode()
    assert len(encoded) == 1024
    assert parse_header(encoded) == header
    assert struct.unpack_from(">I", encoded, 10) == (1024,)
    with pytest.raises(ValueError):
        Header(64, S, 1, b"\x01" * 7, WrappedKey("k7", "ab" * 16, b"\x05" * 60)).encode()


class _CountingFiles(FileBlobStore):
    """Counts the files opened (what a read of a small object pays for, per request)."""

    opened = 0

    def open(self, key: str, *, context: BlobContext):  # type: ignore[no-untyped-def]
        self.opened += 1
        return super().open(key, context=context)

    def read(self, key: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.opened += 1
        return super().read(key, *args, **kwargs)

    def iter_chunks(self, key: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.opened += 1
        return super().iter_chunks(key, *args, **kwargs)


@pytest.mark.parametrize("whole", [True, False])
def test_a_local_blob_streams_from_one_open(tmp_path: Path, whole: bool) -> None:
    inner = _CountingFiles(tmp_path / "blobs", durable=False)
    store = EncryptedBlobStore(inner, LocalKeyring(tmp_path / "keyring.jsonl", durable=False))
    data, ctx = os.urandom(3 * S + 5), _context()
    path = tmp_path / "plain"
    path.write_bytes(data)
    key = store.new_key()
    store.put_file(key, PlainFile(path, len(data)), context=ctx)
    inner.opened = 0
    start, length = (0, None) if whole else (S - 3, S + 9)
    chunks = store.iter_chunks(key, start, length, chunk_size=S, context=ctx)
    end = None if length is None else start + length
    assert b"".join(chunks) == data[start:end]
    assert inner.opened == 1
