"""The blob store contract: one suite every BlobStore backend passes (nubis.ports.blobs).

:class:`BlobStoreContract` holds the tests; each backend subclasses it with a ``store`` fixture
giving a fresh, empty store whose multipart threshold (where it has one) is 8 MiB, so the
large-object test crosses it with 20 MiB. Run against the folder store and against S3 on a
real Ceph RGW, over HTTP and over HTTPS (tests/contract/conftest.py starts it), and against the
encrypted store (encryption at rest, HIPAA 164.312(a)(2)(iv)) over each kind: fed plaintext
files (encrypted by a copy) and sealed spool files (encrypted as they arrived, as in the
archive).
"""

from __future__ import annotations

import io
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from contract import Ceph
from nubis.blobs.bucket_tiers import BucketTierStore
from nubis.blobs.encrypted import EncryptedBlobStore
from nubis.blobs.filesystem import FileBlobStore
from nubis.blobs.folder_tiers import FolderTierStore
from nubis.blobs.registry import open_blob_store
from nubis.blobs.s3 import S3BlobStore
from nubis.crypto.envelope import HEADER_RESERVE, ciphertext_size
from nubis.crypto.local_keys import LocalKeyring
from nubis.errors import StorageUnavailable
from nubis.ports.blobs import (
    BlobContext,
    BlobExists,
    BlobNotFound,
    BlobStore,
    LocalFile,
    PlainFile,
)
from nubis.services.spool import Spool as SealedSpool
from nubis.tiers.rules import parse_tiers

# The encrypted store needs the Patient ID on a put, to choose the patient key.
CTX = BlobContext("default", "1.2.3", "1.2.3.4", "1.2.3.4.5", "0" * 64, patient_id="PAT-1")
MiB = 1 << 20
PART = 8 * MiB
# More than two list pages of the S3 stores here (page_size=50), so paging is exercised.
LISTED = 120
PAGE = 50


class Spool:
    """Writes test bytes into local files, as the spool does before a put."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def file(self, data: bytes) -> LocalFile:
        path = self.folder / uuid.uuid4().hex
        path.write_bytes(data)
        return PlainFile(path, len(data))


class Sealing(Spool):
    """Writes test bytes through the archive's sealed spool: encrypted as they arrive, handed
    over with their in-memory key (nubis.services.spool), the way every object reaches the
    encrypted store in the archive."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.sealed = SealedSpool(folder, sealed=True)

    def file(self, data: bytes) -> LocalFile:
        with self.sealed.writer() as writer:
            for at in range(0, len(data), 100_000):
                writer.write(data[at : at + 100_000])
            return writer.finish()


def put(store: BlobStore, spool: Spool, data: bytes) -> str:
    key = store.new_key()
    store.put_file(key, spool.file(data), context=CTX)
    return key


def pattern(size: int, seed: int = 0) -> bytes:
    """Bytes whose value depends on their position, so an off-by-one range shows."""
    block = bytes((i * 31 + seed) % 251 for i in range(251))
    return (block * (size // len(block) + 1))[:size]


# Ranges at the edges of a 10,000-byte blob: (start, length) -> the bytes expected.
EDGE_RANGES = [
    (0, None),
    (0, 1),
    (0, 10_000),
    (1, 9_999),
    (9_999, 1),
    (9_999, None),
    (9_990, 100),  # runs past the end: the bytes there are
    (10_000, None),  # starts at the end: nothing
    (10_000, 5),
    (25_000, None),  # starts past the end: nothing, not an error
    (5_000, 0),
    (4_096, 4_096),
]


class BlobStoreContract:
    """The tests; subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def store(self) -> BlobStore:
        raise NotImplementedError

    @pytest.fixture
    def spool(self, tmp_path: Path) -> Spool:
        return Spool(tmp_path / "spool")

    def stored_size(self, size: int) -> int:
        """What list() reports for a blob of ``size`` bytes: the bytes it occupies in the
        store (nubis.ports.blobs.BlobInfo)."""
        return size

    # ------------------------------------------------------------------ put and read
    @pytest.mark.parametrize("size", [0, 1, 1000, 3 * MiB + 7])
    def test_put_then_read_whole(self, store: BlobStore, spool: Spool, size: int) -> None:
        data = pattern(size)
        source = spool.file(data)
        key = store.new_key()
        store.put_file(key, source, context=CTX)
        assert not source.path.exists(), "put_file must consume its source"
        assert store.read(key, context=CTX) == data
        assert b"".join(store.iter_chunks(key, context=CTX)) == data

    def test_keys_are_fresh_and_opaque(self, store: BlobStore) -> None:
        keys = {store.new_key() for _ in range(1000)}
        assert len(keys) == 1000
        assert all(k.isalnum() and k.isascii() for k in keys)

    @pytest.mark.parametrize(("start", "length"), EDGE_RANGES)
    def test_read_ranges_at_edges(
        self, store: BlobStore, spool: Spool, start: int, length: int | None
    ) -> None:
        data = pattern(10_000, seed=3)
        key = put(store, spool, data)
        end = None if length is None else start + length
        assert store.read(key, start, length, context=CTX) == data[start:end]

    @pytest.mark.parametrize(("start", "length"), EDGE_RANGES)
    @pytest.mark.parametrize("chunk_size", [1, 7, 4096, MiB])
    def test_iter_chunks_ranges_at_edges(
        self, store: BlobStore, spool: Spool, start: int, length: int | None, chunk_size: int
    ) -> None:
        data = pattern(10_000, seed=5)
        key = put(store, spool, data)
        end = None if length is None else start + length
        chunks = list(store.iter_chunks(key, start, length, chunk_size, context=CTX))
        assert b"".join(chunks) == data[start:end]
        assert all(0 < len(c) <= chunk_size for c in chunks)

    def test_open_is_a_seekable_file(self, store: BlobStore, spool: Spool) -> None:
        data = pattern(3 * MiB + 11, seed=7)
        key = put(store, spool, data)
        with store.open(key, context=CTX) as f:
            assert f.seekable() and f.readable()
            assert f.read(5) == data[:5]
            assert f.tell() == 5
            f.seek(2 * MiB - 3)
            assert f.read(10) == data[2 * MiB - 3 : 2 * MiB + 7]
            f.seek(-4, io.SEEK_END)
            assert f.read() == data[-4:]
            assert f.read(10) == b""
            f.seek(10)
            f.seek(100, io.SEEK_CUR)
            assert f.read(2 * MiB) == data[110 : 110 + 2 * MiB]
            f.seek(len(data) + 10)
            assert f.read(1) == b""
            f.seek(0)
            assert f.read() == data
            buffer = bytearray(6)
            f.seek(1)
            assert f.readinto(buffer) == 6 and bytes(buffer) == data[1:7]  # type: ignore[attr-defined]

    def test_open_serves_a_decoder(self, store: BlobStore, spool: Spool) -> None:
        path = get_testdata_file("CT_small.dcm")
        assert path is not None
        data = Path(path).read_bytes()
        key = put(store, spool, data)
        with store.open(key, context=CTX) as f:
            ds = pydicom.dcmread(f)
            assert ds.pixel_array.shape == (128, 128)
        assert ds.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID

    def test_large_object_crosses_the_multipart_threshold(
        self, store: BlobStore, spool: Spool
    ) -> None:
        data = os.urandom(20 * MiB + 5)
        key = put(store, spool, data)
        assert store.read(key, context=CTX) == data
        # A range across the first part boundary, and the tail of the last part.
        assert store.read(key, PART - 10, 20, context=CTX) == data[PART - 10 : PART + 10]
        assert store.read(key, 2 * PART + 1, None, context=CTX) == data[2 * PART + 1 :]
        [info] = [i for i in store.list() if i.key == key]
        assert info.size == self.stored_size(len(data))

    # ------------------------------------------------------------------ create only
    def test_put_is_create_only(self, store: BlobStore, spool: Spool) -> None:
        key = put(store, spool, b"first")
        with pytest.raises(BlobExists):
            store.put_file(key, spool.file(b"second, different"), context=CTX)
        assert store.read(key, context=CTX) == b"first"

    def test_large_put_is_create_only(self, store: BlobStore, spool: Spool) -> None:
        key = put(store, spool, b"small one")
        with pytest.raises(BlobExists):
            store.put_file(key, spool.file(os.urandom(PART + 1)), context=CTX)
        assert store.read(key, context=CTX) == b"small one"

    def test_concurrent_puts(self, store: BlobStore, spool: Spool) -> None:
        blobs = {store.new_key(): pattern(1000 + i, seed=i) for i in range(48)}
        sources = {key: spool.file(data) for key, data in blobs.items()}
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: store.put_file(k, sources[k], context=CTX), blobs))
        for key, data in blobs.items():
            assert store.read(key, context=CTX) == data

    def test_concurrent_puts_to_one_key_store_one(self, store: BlobStore, spool: Spool) -> None:
        key = store.new_key()
        datas = [b"writer %d" % i for i in range(8)]
        sources = [spool.file(d) for d in datas]
        barrier = threading.Barrier(len(sources))

        def attempt(source: LocalFile) -> bool:
            barrier.wait()
            try:
                store.put_file(key, source, context=CTX)
            except BlobExists:
                return False
            return True

        with ThreadPoolExecutor(len(sources)) as pool:
            won = [d for d, ok in zip(datas, pool.map(attempt, sources), strict=True) if ok]
        assert len(won) == 1
        assert store.read(key, context=CTX) == won[0]

    # ------------------------------------------------------------------ missing, delete, list
    def test_missing_key(self, store: BlobStore) -> None:
        key = store.new_key()
        with pytest.raises(BlobNotFound):
            store.read(key, context=CTX)
        with pytest.raises(BlobNotFound):
            store.read(key, 10, 5, context=CTX)
        with pytest.raises(BlobNotFound):
            # Raised by the call itself, before a response would start streaming.
            store.iter_chunks(key, context=CTX)
        with pytest.raises(BlobNotFound):
            store.open(key, context=CTX)

    @pytest.mark.parametrize("key", ["", "../../etc/passwd", "ABCDEF" * 6, "x" * 32])
    def test_keys_not_made_by_the_store_name_nothing(self, store: BlobStore, key: str) -> None:
        with pytest.raises(BlobNotFound):
            store.read(key, context=CTX)
        store.delete(key)

    def test_delete_is_idempotent(self, store: BlobStore, spool: Spool) -> None:
        key = put(store, spool, b"doomed")
        store.delete(key)
        with pytest.raises(BlobNotFound):
            store.read(key, context=CTX)
        store.delete(key)
        store.delete(store.new_key())
        assert key not in {i.key for i in store.list()}

    def test_list_is_complete(self, store: BlobStore, spool: Spool) -> None:
        assert list(store.list()) == []
        blobs = {store.new_key(): pattern(i, seed=i) for i in range(LISTED)}
        sources = {key: spool.file(data) for key, data in blobs.items()}
        before = time.time()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: store.put_file(k, sources[k], context=CTX), blobs))
        listed = list(store.list())
        assert sorted(i.key for i in listed) == sorted(blobs)
        for info in listed:
            assert info.size == self.stored_size(len(blobs[info.key]))
            # Clocks of a store may differ a little from ours; an hour would be a bug.
            assert abs(info.modified_at - before) < 3600


# ---------------------------------------------------------------------- the backends
class TestFileBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:
        return FileBlobStore(tmp_path / "blobs", durable=False)


class _MovedAfterPut(FolderTierStore):
    """Tier folders with every blob moved out of the first folder as soon as it is put."""

    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        super().put_file(key, source, context=context)
        self.move(key, "cold")


class TestFolderTierStore(BlobStoreContract):
    """Storage tiers of the folder store (nubis.blobs.folder_tiers): blobs read, listed and
    deleted from a tier folder other than the first."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> BlobStore:
        hot = FileBlobStore(tmp_path / "blobs", durable=False)
        return _MovedAfterPut(hot, [("hot", hot.root), ("cold", tmp_path / "cold")])


def s3_store(ceph: Ceph, *, tls: bool, **options: object) -> S3BlobStore:
    """A store under a prefix of its own (a fresh, empty store) in the Ceph test bucket."""
    return S3BlobStore(
        ceph.bucket,
        f"contract/{uuid.uuid4().hex}",
        endpoint_url=ceph.tls_endpoint if tls else ceph.endpoint,
        ca_bundle=ceph.ca_bundle if tls else None,
        multipart_threshold=PART,
        part_size=PART,
        page_size=PAGE,
        **options,  # type: ignore[arg-type]
    )


class TestS3BlobStoreOnCeph(BlobStoreContract):
    @pytest.fixture
    def store(self, ceph: Ceph) -> BlobStore:
        return s3_store(ceph, tls=False)


class TestS3BlobStoreOnCephOverHttps(BlobStoreContract):
    @pytest.fixture
    def store(self, ceph: Ceph) -> BlobStore:
        # Over TLS boto3 >= 1.36 would send aws-chunked bodies, which Ceph 16 refuses (411):
        # this class is what proves the checksum settings of S3BlobStore.
        return s3_store(ceph, tls=True)


class _MovedToBucketAfterPut(BucketTierStore):
    """Tier buckets with every blob moved out of the blobs bucket as soon as it is put."""

    def put_file(self, key: str, source: LocalFile, *, context: BlobContext) -> None:
        super().put_file(key, source, context=context)
        self.move(key, "cold")


class TestBucketTierStoreOnCeph(BlobStoreContract):
    """S3 tiers in buckets of their own (nubis.blobs.bucket_tiers): blobs read, listed and
    deleted from a tier bucket other than the blobs bucket."""

    @pytest.fixture
    def store(self, ceph: Ceph, new_bucket: Callable[[str], str]) -> BlobStore:
        tiers = parse_tiers(f"hot=STANDARD,cold=s3://{new_bucket('cold')}/tier")
        return _MovedToBucketAfterPut(s3_store(ceph, tls=False), tiers)


class EncryptedContract(BlobStoreContract):
    """The encrypted store over a plain one (``inner`` fixture), fed plaintext files."""

    @pytest.fixture
    def inner(self) -> BlobStore:
        raise NotImplementedError

    @pytest.fixture
    def store(self, inner: BlobStore, tmp_path: Path) -> BlobStore:
        return EncryptedBlobStore(inner, LocalKeyring(tmp_path / "keyring.jsonl", durable=False))

    def stored_size(self, size: int) -> int:
        # Header reserve, then the plaintext with a 16-byte tag per 64 KiB segment.
        return HEADER_RESERVE + ciphertext_size(size)


class SealedContract(EncryptedContract):
    """The encrypted store fed sealed spool files, as the archive feeds it."""

    @pytest.fixture
    def spool(self, tmp_path: Path) -> Spool:
        return Sealing(tmp_path / "spool")


class TestEncryptedOverFileBlobStore(EncryptedContract):
    @pytest.fixture
    def inner(self, tmp_path: Path) -> BlobStore:
        return FileBlobStore(tmp_path / "blobs", durable=False)


class TestEncryptedOverFileBlobStoreSealed(SealedContract):
    @pytest.fixture
    def inner(self, tmp_path: Path) -> BlobStore:
        return FileBlobStore(tmp_path / "blobs", durable=False)


class TestEncryptedOverS3OnCephSealed(SealedContract):
    # Over HTTP only: HTTPS changes nothing above the S3 store, whose own class covers it.
    @pytest.fixture
    def inner(self, ceph: Ceph) -> BlobStore:
        return s3_store(ceph, tls=False)


# ---------------------------------------------------------------------- S3 only
@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nobody listens on (bound without listen: connections are refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_s3_store_down_is_storage_unavailable_quickly(tmp_path: Path, closed_port: int) -> None:
    store = S3BlobStore(
        "bucket", endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=3, connect_timeout=1
    )
    spool = Spool(tmp_path)
    source = spool.file(b"not acknowledged")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as caught:
        store.put_file(store.new_key(), source, context=CTX)
    assert caught.value.http_status == 503 and caught.value.dimse_status == 0xA700
    # Never acknowledged, so the spooled bytes are still there for the caller to discard.
    assert source.path.exists()
    for call in (
        lambda: store.read(store.new_key(), context=CTX),
        lambda: store.iter_chunks(store.new_key(), context=CTX),
        lambda: store.open(store.new_key(), context=CTX),
        lambda: list(store.list()),
        lambda: store.delete(store.new_key()),
    ):
        with pytest.raises(StorageUnavailable):
            call()
    # 6 operations x 3 attempts with backoff: bounded, not minutes.
    assert time.monotonic() - started < 20


def test_s3_tiers(ceph: Ceph, tmp_path: Path) -> None:
    store = s3_store(ceph, tls=False)
    spool = Spool(tmp_path)
    key = put(store, spool, b"tiered")
    assert store.tier(key) == "STANDARD"
    store.set_tier(key, "GLACIER")
    assert store.tier(key) == "GLACIER"
    assert store.read(key, context=CTX) == b"tiered"
    store.set_tier(key, "STANDARD")
    assert store.tier(key) == "STANDARD"
    cold = s3_store(ceph, tls=False, storage_class="STANDARD_IA")
    cold_key = put(cold, spool, b"cold from the start")
    assert cold.tier(cold_key) == "STANDARD_IA"


def test_s3_url_opens_the_store(ceph: Ceph, tmp_path: Path) -> None:
    url = ceph.url("contract/url", tls=True, multipart_threshold="8M", part_size="8MiB")
    store = open_blob_store(url)
    assert isinstance(store, S3BlobStore)
    assert store.multipart_threshold == PART and store.part_size == PART
    key = put(store, Spool(tmp_path), b"via URL")
    assert store.read(key, context=CTX) == b"via URL"
    store.delete(key)


def test_s3_objects_are_where_the_prefix_says(ceph: Ceph, tmp_path: Path) -> None:
    store = s3_store(ceph, tls=False)
    key = put(store, Spool(tmp_path), b"here")
    listed = ceph.client().list_objects_v2(Bucket=ceph.bucket, Prefix=store.prefix)
    assert [o["Key"] for o in listed["Contents"]] == [store.prefix + key]
    # Objects of others under the prefix are not blobs of ours: list() leaves them out, so
    # the reaper never deletes them.
    ceph.client().put_object(Bucket=ceph.bucket, Key=store.prefix + "README", Body=b"x")
    assert [i.key for i in store.list()] == [key]
