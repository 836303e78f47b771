"""S3BlobStore under faults a real store rarely shows on demand, served by a small local stub.

What Ceph does right is proved by the contract suite (tests/contract); here a stub speaking
just enough S3 plays the store that fails: 5xx answers, a PUT whose answer is lost after the
object was stored, a GET body that breaks halfway.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nubis.blobs.bucket_tiers import BucketTierStore
from nubis.blobs.registry import open_blob_store
from nubis.blobs.s3 import S3BlobStore, from_url
from nubis.errors import RestoreRequired, StorageUnavailable, UnknownBackend
from nubis.ports.blobs import BlobContext, BlobExists, PlainFile
from nubis.tiers.movers import find_mover
from nubis.tiers.rules import parse_tiers

CTX = BlobContext("default", "1.2.3", "1.2.3.4", "1.2.3.4.5", "0" * 64)
KEY = "0123456789abcdef0123456789abcdef"


@dataclass
class Stub:
    """What the stub store holds and how it misbehaves; ``requests`` logs (method, range)."""

    objects: dict[str, bytes] = field(default_factory=dict)
    fail_next: int = 0  # answer this many requests with 503
    lose_next_put_answer: bool = False  # store the next PUT, then answer it with 500
    break_next_get: bool = False  # send half the body of the next GET, then hang up
    archived: set[str] = field(default_factory=set)  # GET answers 403 InvalidObjectState
    restores: list[str] = field(default_factory=list)  # bodies of RestoreObject requests
    restored: list[str] = field(default_factory=list)  # objects they named (/bucket/key)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(stub: Stub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            self._reply(status, f"<Error><Code>{code}</Code></Error>".encode())

        def _begin(self) -> bool:
            with stub.lock:
                stub.requests.append((self.command, self.headers.get("Range")))
                if stub.fail_next:
                    stub.fail_next -= 1
                    failing = True
                else:
                    failing = False
            if failing:
                self._drain()
                self._error(503, "ServiceUnavailable")
            return not failing

        def _drain(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_PUT(self) -> None:
            if not self._begin():
                return
            body = self._drain()
            if self.path in stub.objects and self.headers.get("If-None-Match") == "*":
                self._error(412, "PreconditionFailed")
                return
            stub.objects[self.path] = body
            if stub.lose_next_put_answer:
                stub.lose_next_put_answer = False
                self._error(500, "InternalError")
                return
            self._reply(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

        def do_HEAD(self) -> None:
            if not self._begin():
                return
            data = stub.objects.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
            self.end_headers()

        def do_GET(self) -> None:
            if not self._begin():
                return
            data = stub.objects.get(self.path)
            if data is None:
                self._error(404, "NoSuchKey")
                return
            if self.path in stub.archived:  # what AWS answers for GLACIER, DEEP_ARCHIVE
                self._error(403, "InvalidObjectState")
                return
            start, end = 0, len(data)
            rng = self.headers.get("Range")
            status = 200
            if rng:
                first, _, last = rng.removeprefix("bytes=").partition("-")
                start, end = int(first), min(len(data), int(last) + 1 if last else len(data))
                status = 206
            body = data[start:end]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if stub.break_next_get:
                stub.break_next_get = False
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

        def do_POST(self) -> None:  # RestoreObject: POST /bucket/key?restore
            if not self._begin():
                return
            body = self._drain().decode()
            path, _, query = self.path.partition("?")
            if query != "restore" or path not in stub.objects:
                self._error(404, "NoSuchKey")
                return
            stub.restores.append(body)
            stub.restored.append(path)
            if len(stub.restores) > 1:
                self._error(409, "RestoreAlreadyInProgress")
                return
            self._reply(202)

    return Handler


@pytest.fixture
def stub() -> Iterator[tuple[Stub, S3BlobStore]]:
    state = Stub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "stub")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "stub-secret")
        store = S3BlobStore(
            "bucket",
            endpoint_url=f"http://127.0.0.1:{server.server_address[1]}",
            max_attempts=3,
            read_timeout=5,
        )
        try:
            yield state, store
        finally:
            server.shutdown()
            server.server_close()


def _file(tmp_path: Path, data: bytes) -> PlainFile:
    path = tmp_path / "spooled"
    path.write_bytes(data)
    return PlainFile(path, len(data))


def test_5xx_is_retried_then_succeeds(stub: tuple[Stub, S3BlobStore], tmp_path: Path) -> None:
    state, store = stub
    state.fail_next = 2
    store.put_file(KEY, _file(tmp_path, b"stored at the third attempt"), context=CTX)
    assert [m for m, _ in state.requests] == ["PUT", "PUT", "PUT"]
    assert state.objects["/bucket/" + KEY] == b"stored at the third attempt"


def test_5xx_after_the_last_attempt_is_storage_unavailable(
    stub: tuple[Stub, S3BlobStore], tmp_path: Path
) -> None:
    state, store = stub
    state.fail_next = 100
    source = _file(tmp_path, b"never acknowledged")
    with pytest.raises(StorageUnavailable):
        store.put_file(KEY, source, context=CTX)
    assert len(state.requests) == 3, "max_attempts bounds the retries"
    assert source.path.exists()
    with pytest.raises(StorageUnavailable):
        store.read(KEY, context=CTX)


def test_put_whose_answer_was_lost_is_not_a_conflict(
    stub: tuple[Stub, S3BlobStore], tmp_path: Path
) -> None:
    state, store = stub
    state.lose_next_put_answer = True
    store.put_file(KEY, _file(tmp_path, b"landed the first time"), context=CTX)
    # The retry met the object (412); its ETag is the MD5 of what was sent, so it is ours.
    assert [m for m, _ in state.requests] == ["PUT", "PUT", "HEAD"]
    assert store.read(KEY, context=CTX) == b"landed the first time"
    # Without a retry, a 412 is a real conflict even for the same bytes.
    with pytest.raises(BlobExists):
        store.put_file(KEY, _file(tmp_path, b"landed the first time"), context=CTX)


def test_broken_body_resumes_from_where_it_broke(stub: tuple[Stub, S3BlobStore]) -> None:
    state, store = stub
    data = bytes(range(256)) * 4096  # 1 MiB
    state.objects["/bucket/" + KEY] = data
    state.break_next_get = True
    chunks = store.iter_chunks(KEY, 1000, None, 64 * 1024, context=CTX)
    assert b"".join(chunks) == data[1000:]
    gets = [r for m, r in state.requests if m == "GET"]
    assert len(gets) == 2
    assert gets[0] == "bytes=1000-"
    resumed_at = int(gets[1].removeprefix("bytes=").rstrip("-"))  # type: ignore[union-attr]
    assert 1000 < resumed_at < len(data)


def test_reading_an_archived_object_requests_a_restore(
    stub: tuple[Stub, S3BlobStore], tmp_path: Path
) -> None:
    """GLACIER / DEEP_ARCHIVE objects answer 403 InvalidObjectState on AWS: the read asks for
    a restore and fails with RestoreRequired (HTTP 503, DIMSE 0xA700), never with bytes."""
    state, store = stub
    store.put_file(KEY, _file(tmp_path, b"archived bytes"), context=CTX)
    state.archived.add(f"/bucket/{KEY}")
    reasons = []
    for read in (
        lambda: store.read(KEY, context=CTX),
        lambda: store.iter_chunks(KEY, context=CTX),
        lambda: store.open(KEY, context=CTX),
        lambda: store.read(KEY, 10, 4, context=CTX),
    ):
        with pytest.raises(RestoreRequired) as caught:
            read()
        assert caught.value.http_status == 503 and caught.value.dimse_status == 0xA700
        reasons.append(caught.value.reason)
    assert "a restore was requested" in reasons[0]
    assert all("a restore was already requested" in r for r in reasons[1:])
    assert "<Days>7</Days>" in state.restores[0] and "<Tier>Standard</Tier>" in state.restores[0]
    assert store.restore(KEY) is False  # one is on its way
    state.archived.clear()  # the restore completed
    assert store.read(KEY, context=CTX) == b"archived bytes"


def test_an_archived_object_in_a_tier_bucket_is_restored_there(
    stub: tuple[Stub, S3BlobStore],
) -> None:
    """A blob in a GLACIER tier bucket answers reads with RestoreRequired, as one in the blobs
    bucket does (not BlobNotFound, nor a look elsewhere), and the restore is asked there."""
    state, main = stub
    tiers = parse_tiers("hot=STANDARD,archive=s3://deep-bucket/p?storage_class=GLACIER")
    store = BucketTierStore(main, tiers)
    state.objects[f"/deep-bucket/p/{KEY}"] = b"archived bytes"
    state.archived.add(f"/deep-bucket/p/{KEY}")
    for read in (
        lambda: store.read(KEY, context=CTX),
        lambda: store.iter_chunks(KEY, context=CTX),
        lambda: store.open(KEY, context=CTX),
    ):
        with pytest.raises(RestoreRequired):
            read()
    assert len(state.restores) == 3  # the first requested it; the others found it coming
    assert state.restored == [f"/deep-bucket/p/{KEY}"] * 3
    mover = find_mover(store)
    assert mover is not None and mover.restore(KEY) is False  # already on its way
    state.archived.clear()  # the restore completed
    assert store.read(KEY, context=CTX) == b"archived bytes"


def test_url_parameters() -> None:
    store = from_url(
        "s3://bucket/some/prefix/?endpoint=https://s3.example:7443&region=eu-west-3"
        "&tier=STANDARD_IA&multipart_threshold=128M&part_size=32MiB&max_attempts=2"
        "&page_size=100&connect_timeout=2&read_timeout=30&restore_days=2&restore_tier=Bulk"
    )
    assert (store.bucket, store.prefix) == ("bucket", "some/prefix/")
    assert store.endpoint_url == "https://s3.example:7443"
    assert store.client.meta.region_name == "eu-west-3"
    assert store.storage_class == "STANDARD_IA"
    assert (store.multipart_threshold, store.part_size) == (128 << 20, 32 << 20)
    assert store.page_size == 100
    assert (store.restore_days, store.restore_tier) == (2, "Bulk")
    assert from_url("s3://bucket").prefix == ""


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/p?endpoit=https://typo",
        "s3://key:secret@bucket/p",
        "s3:///no-bucket",
        "s3://bucket/p?part_size=1M",  # below the S3 minimum part
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(UnknownBackend) as caught:
        open_blob_store(url)
    assert "secret" not in str(caught.value)
