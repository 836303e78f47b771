"""Blobs as objects in an S3-compatible store (AWS S3, Ceph RGW, MinIO), with boto3.

URL (``blobs`` setting)::

    s3://BUCKET[/PREFIX]?endpoint=https://host:port&region=REGION&ca_bundle=/path/ca.pem

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, ``~/.aws/credentials``, instance roles); never from the URL, which is logged and
shown in ``/-/settings``. See :func:`from_url` for every query parameter.

What makes an acknowledgement safe here:

- A blob is stored by one ``PutObject`` with ``If-None-Match: *`` (create only) and
  ``Content-MD5`` (the store checks the bytes it received); durability is the 200 of that PUT.
  A 412 answered to a retried PUT whose first attempt did land is told apart from a real
  conflict by the stored object's ETag (the MD5 of what we sent).
- Objects above ``multipart_threshold`` go up in parts read one at a time from the spool file
  (memory stays at one part). Ceph ignores ``If-None-Match`` on CompleteMultipartUpload and
  answers it with an empty ETag, so the key is checked free before the upload and the object is
  HEADed afterwards: its ETag must be the multipart ETag of the parts we sent.
- Failures after botocore's retries (5xx, throttling, timeouts, refused connections) raise
  :class:`~nubis.errors.StorageUnavailable` (HTTP 503, C-STORE 0xA700), never a silent success.
  A response body that breaks while streaming is resumed with a ranged GET from where it broke,
  which botocore does not do by itself.
- A read of an object in an archive class (GLACIER, DEEP_ARCHIVE: 403 InvalidObjectState)
  asks the store to restore it (RestoreObject, ``restore_days``) and raises
  :class:`~nubis.errors.RestoreRequired` (HTTP 503, DIMSE 0xA700): never bytes, never a 500.

Our own SHA-256 of every object stays in the index and is checked on read by the services;
the store's checksums (``x-amz-checksum-*``) are not relied upon: Ceph neither stores nor checks
them. ``request_checksum_calculation="when_required"`` keeps boto3 >= 1.36 from sending
aws-chunked bodies, which Ceph 16 refuses over HTTPS (411 MissingContentLength).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import logging
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qs, unquote, urlparse

from nubis.errors import RestoreRequired, StorageUnavailable
from nubis.ports.blobs import (
    BlobCapabilities,
    BlobContext,
    BlobExists,
    BlobInfo,
    BlobNotFound,
    LocalFile,
)
from nubis.ports.reader import PositionedReader

try:
    import boto3
    import botocore.loaders
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError("the S3 blob store needs boto3: pip install 'nubis[s3]'") from exc

__all__ = ["S3BlobStore", "from_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1 << 20
# S3 (and RGW by default) refuses parts under 5 MiB except the last one, and copies above 5 GiB.
_MIN_PART = 5 * MiB
_MAX_COPY = 5 << 30
# Objects too large for one CopyObject are copied in parts of this size.
_COPY_PART = 1 << 30
_KEY = re.compile(r"[0-9a-f]{32}\Z")
_MULTIPART_ETAG = re.compile(r"[0-9a-f]{32}-\d+\Z")
# Tries of a GET whose body breaks mid-way: botocore retries a request only until its response
# headers arrive, so resuming a broken body (a ranged GET from where it broke) is ours.
_STREAM_ATTEMPTS = 3


@dataclass(frozen=True)
class _Range:
    start: int
    end: int | None  # exclusive; None = to the end of the object


class S3BlobStore:
    """A :class:`~nubis.ports.blobs.BlobStore` over one bucket (and key prefix) of an S3 API.

    Parameters
    ----------
    bucket : str
        The bucket; it must exist (nubis never creates or configures buckets).
    prefix : str
        Key prefix inside the bucket, so several archives can share one bucket.
    endpoint_url : str or None
        ``https://host:port`` of an S3-compatible store; None for AWS (or ``AWS_ENDPOINT_URL``).
    region : str or None
        Region name; None takes boto3's (``AWS_DEFAULT_REGION``, config file), else us-east-1.
    ca_bundle : str or None
        PEM file of the CAs to trust for HTTPS (a private CA, such as Ceph's in the tests).
    storage_class : str or None
        StorageClass of new objects (their tier); None is the bucket's default (STANDARD).
    multipart_threshold, part_size : int
        Objects larger than ``multipart_threshold`` bytes go up in parts of ``part_size``.
    max_attempts : int
        Attempts per request, including the first (botocore "standard" retries: 5xx,
        throttling, timeouts and connection errors, with exponential backoff and jitter).
    connect_timeout, read_timeout : float
        Seconds to wait for a connection and for each read on it.
    page_size : int
        Keys per ListObjectsV2 page (at most 1000).
    read_ahead : int
        Bytes fetched per ranged GET by the file objects of :meth:`open`.
    max_connections : int
        Connection pool size, shared by every thread of the process.
    restore_days : int
        Days a restored copy of an archived object stays readable.
    restore_tier : str
        Retrieval tier of restores: Expedited, Standard or Bulk (AWS prices and delays).
    """

    capabilities = BlobCapabilities(adopts_local_files=False, range_reads=True, remote=True)

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        ca_bundle: str | None = None,
        storage_class: str | None = None,
        multipart_threshold: int = 64 * MiB,
        part_size: int = 16 * MiB,
        max_attempts: int = 5,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        page_size: int = 1000,
        read_ahead: int = MiB,
        max_connections: int = 64,
        restore_days: int = 7,
        restore_tier: str = "Standard",
    ) -> None:
        if part_size < _MIN_PART:
            raise ValueError(f"part_size must be at least {_MIN_PART} bytes (the S3 minimum)")
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        self.bucket = bucket
        self.prefix = _key_prefix(prefix)
        self.storage_class = storage_class
        self.multipart_threshold = max(multipart_threshold, part_size)
        self.part_size = part_size
        self.page_size = page_size
        self.read_ahead = read_ahead
        self.endpoint_url = endpoint_url
        self.restore_days = restore_days
        self.restore_tier = restore_tier
        config = Config(
            s3={"addressing_style": "path"},
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_connections,
            # Ceph RGW 16 refuses aws-chunked bodies with trailing checksums (what boto3 >= 1.36
            # sends over HTTPS by default): 411 MissingContentLength on every PUT.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = _session()
        self.client: Any = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or session.region_name or "us-east-1",
            verify=ca_bundle if ca_bundle else True,
            config=config,
        )
        # Create-only PUTs for every boto3 version we allow (IfNoneMatch became a parameter
        # only in botocore 1.35); CopyObject (set_tier, copy_from) is a different operation.
        self.client.meta.events.register("before-call.s3.PutObject", _create_only)
        # AWS honours If-None-Match on CompleteMultipartUpload too (RGW ignores it); pass it
        # where this botocore knows the parameter. Not as an event hook: set_tier completes
        # multipart copies onto an existing key (copy_from onto itself).
        complete = self.client.meta.service_model.operation_model("CompleteMultipartUpload")
        self._complete_create_only: dict[str, str] = (
            {"IfNoneMatch": "*"} if "IfNoneMatch" in complete.input_shape.members else {}
        )

    def __repr__(self) -> str:
        where = self.endpoint_url or "aws"
        return f"S3BlobStore({where}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def at(self, bucket: str, prefix: str = "") -> S3BlobStore:
        """The same service, credentials, settings and connection pool over another bucket
        (and prefix): where a storage tier kept in a bucket of its own lives."""
        other = copy.copy(self)
        other.bucket = bucket
        other.prefix = _key_prefix(prefix)
        return other

    # ------------------------------------------------------------------ keys
    def new_key(self) -> str:
        return secrets.token_hex(16)

    def _object(self, key: str) -> str:
        # Keys come from new_key() or the index; anything else names no blob of ours.
        if not _KEY.match(key):
            raise BlobNotFound(key)
        return self.prefix + key

    # ------------------------------------------------------------------ writes
    def put_file(self, key: str, source: LocalFile, *, context: BlobContext | None = None) -> None:
        """Upload the spooled file, then delete it; returns once the store answered 200.

        Raises
        ------
        BlobExists
            An object is already stored under ``key`` (and is not the one just sent).
        StorageUnavailable
            The store could not be reached or refused the write after retries.
        """
        if source.seal is not None:
            # Ciphertext under a key only the encrypted store holds (a wiring error).
            raise ValueError("a sealed spool file needs the encrypted blob store")
        name = self._object(key)
        with source.open() as f:
            # The bytes on disk, not ``source.size``: a wrapping store may hand over a file
            # that is larger than the object it describes (the encrypted store's header and
            # tags); a Content-Length short of the file would be refused (BadDigest) at best.
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            if size > self.multipart_threshold:
                self._put_multipart(key, name, f, size)
            else:
                self._put_single(key, name, f, size)
        # Only now is the spool copy redundant: the store has acknowledged the bytes.
        source.path.unlink(missing_ok=True)

    def _put_single(self, key: str, name: str, f: BinaryIO, size: int) -> None:
        md5 = hashlib.md5(usedforsecurity=False)
        while chunk := f.read(MiB):
            md5.update(chunk)
        f.seek(0)
        extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        try:
            self._call(
                "put",
                key,
                self.client.put_object,
                Bucket=self.bucket,
                Key=name,
                Body=f,
                ContentLength=size,
                ContentMD5=base64.b64encode(md5.digest()).decode(),
                ContentType="application/octet-stream",
                **extra,
            )
        except BlobExists as exc:
            # A retried PUT whose first attempt landed (its answer lost) meets our own object:
            # the same bytes, so it is stored. Without a retry, a 412 is a real conflict.
            if not getattr(exc, "retried", False) or self._etag(key) != md5.hexdigest():
                raise

    def _put_multipart(self, key: str, name: str, f: BinaryIO, size: int) -> None:
        # RGW ignores If-None-Match on CompleteMultipartUpload: check the key is free first.
        # Keys are random (new_key), so this guards against misuse, not against a race.
        with contextlib.suppress(BlobNotFound):
            self._head(key)
            raise BlobExists(key)
        extra = {"StorageClass": self.storage_class} if self.storage_class else {}
        upload = self._call(
            "put",
            key,
            self.client.create_multipart_upload,
            Bucket=self.bucket,
            Key=name,
            ContentType="application/octet-stream",
            **extra,
        )
        upload_id = upload["UploadId"]
        parts: list[dict[str, Any]] = []
        digests: list[bytes] = []
        try:
            number = 1
            while data := f.read(self.part_size):
                digest = hashlib.md5(data, usedforsecurity=False).digest()
                self._call(
                    "put",
                    key,
                    self.client.upload_part,
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data,
                    ContentLength=len(data),
                    ContentMD5=base64.b64encode(digest).decode(),
                )
                parts.append({"PartNumber": number, "ETag": f'"{digest.hex()}"'})
                digests.append(digest)
                number += 1
            self._call(
                "put",
                key,
                self.client.complete_multipart_upload,
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **self._complete_create_only,
            )
        except BaseException:
            # Parts of an abandoned upload are invisible to list() but still take space.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        # CompleteMultipartUpload answers with an empty ETag on RGW: HEAD for the real one, which
        # proves the object assembled from exactly the parts we sent.
        expected = hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()
        head = self._head(key)
        etag = head.get("ETag", "").strip('"')
        stored_size = int(head.get("ContentLength", -1))
        if stored_size != size or (
            _MULTIPART_ETAG.match(etag) and etag != f"{expected}-{len(parts)}"
        ):
            log.error(
                "multipart object %s: stored %d bytes, ETag %s; sent %d bytes, ETag %s-%d",
                name, stored_size, etag, size, expected, len(parts),
            )  # fmt: skip
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=name)
            raise StorageUnavailable("the blob store did not keep the object as sent")

    # ------------------------------------------------------------------ reads
    def read(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        *,
        context: BlobContext | None = None,
    ) -> bytes:
        if length == 0:
            self._head(key)  # a missing blob is an error even for an empty range
            return b""
        end = None if length is None else start + length
        return b"".join(self._stream(key, _Range(start, end), MiB))

    def iter_chunks(
        self,
        key: str,
        start: int = 0,
        length: int | None = None,
        chunk_size: int = MiB,
        *,
        context: BlobContext | None = None,
    ) -> Iterator[bytes]:
        if length == 0:
            self._head(key)
            return iter(())
        end = None if length is None else start + length
        stream = self._stream(key, _Range(start, end), chunk_size)
        # Send the first GET now, so a missing blob or a store that is down raises here, before
        # a response has started, rather than halfway through one.
        try:
            first = next(stream)
        except StopIteration:
            return iter(())
        return _prepend(first, stream)

    def _stream(self, key: str, rng: _Range, chunk_size: int) -> Iterator[bytes]:
        """Chunks of one ranged GET, resumed from where it broke if the body breaks."""
        pos = rng.start
        failures = 0
        while rng.end is None or pos < rng.end:
            body = self._get(key, pos, rng.end)
            if body is None:  # the range starts at or past the end of the object
                return
            try:
                while rng.end is None or pos < rng.end:
                    try:
                        chunk = body.read(chunk_size)
                    except (BotoCoreError, OSError, ValueError) as exc:
                        # urllib3 ProtocolError / IncompleteRead, botocore ReadTimeoutError or
                        # ResponseStreamingError: the connection broke mid-body.
                        failures += 1
                        if failures >= _STREAM_ATTEMPTS:
                            log.error("GET %s broke %d times: %s", key, failures, exc)
                            raise StorageUnavailable("the blob store stopped answering") from None
                        log.warning("GET %s broke at byte %d (%s); resuming", key, pos, exc)
                        time.sleep(_backoff(failures))
                        break
                    if not chunk:
                        return
                    pos += len(chunk)
                    yield chunk
                else:
                    return
            finally:
                body.close()

    def _get(self, key: str, start: int, end: int | None) -> Any:
        name = self._object(key)
        args: dict[str, Any] = {"Bucket": self.bucket, "Key": name}
        if start > 0 or end is not None:
            args["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            return self._call("get", key, self.client.get_object, **args)["Body"]
        except _RangeNotSatisfiable:
            return None

    def open(self, key: str, *, context: BlobContext | None = None) -> BinaryIO:
        """A seekable read-only file over the object; each miss of its buffer is one ranged GET.

        The first ``read_ahead`` bytes are fetched now (a missing blob raises here), which also
        serves the small reads decoders begin with (the DICOM preamble and file meta).
        """
        return _ObjectFile(self, key)  # type: ignore[return-value]

    def _head(self, key: str) -> dict[str, Any]:
        return self._call(
            "head", key, self.client.head_object, Bucket=self.bucket, Key=self._object(key)
        )

    def _etag(self, key: str) -> str:
        return str(self._head(key).get("ETag", "")).strip('"')

    def size(self, key: str) -> int:
        """Size in bytes of the stored blob (raises BlobNotFound)."""
        return int(self._head(key)["ContentLength"])

    # ------------------------------------------------------------------ tiers
    def tier(self, key: str) -> str:
        """The object's storage class (STANDARD when the store does not name one)."""
        return str(self._head(key).get("StorageClass") or "STANDARD")

    def set_tier(self, key: str, tier: str) -> None:
        """Move the object to storage class ``tier`` by copying it onto itself.

        The bytes and the key stay; only the class changes (lifecycle work).
        """
        self.copy_from(self, key, tier)

    def copy_from(
        self, source: S3BlobStore, key: str, storage_class: str | None, size: int | None = None
    ) -> None:
        """Copy the blob ``key`` of ``source`` (this store, or another bucket of the same
        service) to the same key here, server-side, in ``storage_class`` (None: the bucket's
        default). Objects above 5 GiB, which one CopyObject cannot take, are copied part by
        part. The source stays: deleting it is the caller's, once the copy is checked.
        ``size`` saves a HEAD of the source when the caller has just made one.
        """
        name = self._object(key)
        if size is None:
            size = source.size(key)
        origin = {"Bucket": source.bucket, "Key": source._object(key)}
        extra = {"StorageClass": storage_class} if storage_class else {}
        if size <= _MAX_COPY:
            self._call(
                "copy",
                key,
                self.client.copy_object,
                Bucket=self.bucket,
                Key=name,
                CopySource=origin,
                MetadataDirective="COPY",
                **extra,
            )
            return
        upload_id = self._call(
            "copy", key, self.client.create_multipart_upload,
            Bucket=self.bucket, Key=name, ContentType="application/octet-stream", **extra,
        )["UploadId"]  # fmt: skip
        parts = []
        try:
            for number, offset in enumerate(range(0, size, _COPY_PART), start=1):
                last = min(offset + _COPY_PART, size) - 1
                answer = self._call(
                    "copy", key, self.client.upload_part_copy,
                    Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number,
                    CopySource=origin, CopySourceRange=f"bytes={offset}-{last}",
                )  # fmt: skip
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            self._call(
                "copy", key, self.client.complete_multipart_upload,
                Bucket=self.bucket, Key=name, UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise

    def restore(self, key: str) -> bool:
        """Ask for a readable copy of an archived object; False when one is already coming
        (or the object is not archived). The copy lasts ``restore_days``."""
        request = {"Days": self.restore_days, "GlacierJobParameters": {"Tier": self.restore_tier}}
        try:
            self.client.restore_object(
                Bucket=self.bucket, Key=self._object(key), RestoreRequest=request
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"RestoreAlreadyInProgress", "ObjectAlreadyInActiveTierError"}:
                return False
            raise self._translate(exc, "restore", key) from None
        except BotoCoreError as exc:
            log.error("S3 restore %s failed: %s", key, exc)
            raise StorageUnavailable("the blob store cannot be reached") from None
        log.info("restore of archived object %s requested (%d days)", key, self.restore_days)
        return True

    # ------------------------------------------------------------------ the rest
    def delete(self, key: str) -> None:
        """Remove the blob; S3 answers a delete of a missing key with success too."""
        try:
            name = self._object(key)
        except BlobNotFound:
            return
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=name)

    def list(self) -> Iterator[BlobInfo]:
        """Every blob under the prefix, one ListObjectsV2 page (``page_size`` keys) at a time.

        Other objects in the bucket (not named like our keys) are skipped, so the reaper never
        deletes what it did not write.
        """
        args: dict[str, Any] = {
            "Bucket": self.bucket,
            "Prefix": self.prefix,
            "MaxKeys": self.page_size,
        }
        while True:
            page = self._call("list", self.prefix, self.client.list_objects_v2, **args)
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) :]
                if _KEY.match(key):
                    yield BlobInfo(key, int(item["Size"]), item["LastModified"].timestamp())
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    # ------------------------------------------------------------------ errors
    def _call(self, what: str, key: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """One S3 request (botocore retries inside); its failures as our errors."""
        try:
            return fn(**kwargs)
        except ClientError as exc:
            error = self._translate(exc, what, key)
            if isinstance(error, RestoreRequired) and what == "get":
                # Whoever reads an archived object wants it back: ask now, so a retry in a
                # few hours succeeds, rather than leave the caller to find an operator.
                requested = self.restore(key)
                error = RestoreRequired(
                    "the object is in archive storage; a restore was "
                    + ("requested" if requested else "already requested")
                    + ": retry in a few hours"
                )
            raise error from None
        except BotoCoreError as exc:
            # Connection refused or reset, timeouts, after botocore's retries.
            log.error("S3 %s %s at %s failed: %s", what, key, self.endpoint_url or "aws", exc)
            raise StorageUnavailable("the blob store cannot be reached") from None

    def _translate(self, exc: ClientError, what: str, key: str) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            log.error("S3 bucket %r does not exist at %s", self.bucket, self.endpoint_url)
            return StorageUnavailable("the blob store is not set up (no such bucket)")
        if status == 404 or code in {"NoSuchKey", "NotFound"}:
            return BlobNotFound(key)
        if status == 412 and what == "put":
            exists = BlobExists(key)
            attempts = exc.response.get("ResponseMetadata", {}).get("RetryAttempts") or 0
            exists.retried = attempts > 0  # type: ignore[attr-defined]
            return exists
        if status == 416 or code == "InvalidRange":
            return _RangeNotSatisfiable(key)
        if code == "InvalidObjectState":
            return RestoreRequired("the object is in archive storage and must be restored first")
        log.error("S3 %s %s failed: HTTP %s %s %s", what, key, status, code, error.get("Message"))
        return StorageUnavailable(f"the blob store refused the request (HTTP {status} {code})")


_loader_lock = threading.Lock()
_loader: Any = None


def _session() -> Any:
    """A boto3 session sharing one model loader with the others of this process.

    Each session would otherwise parse the S3 service model again (about 0.3 s); credentials
    are still resolved per session, from the environment and files as they are now.
    """
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = botocore.loaders.create_loader()
        core = botocore.session.get_session()
        core.register_component("data_loader", _loader)
        return boto3.session.Session(botocore_session=core)


def _key_prefix(prefix: str) -> str:
    return prefix.strip("/") + "/" if prefix.strip("/") else ""


class _RangeNotSatisfiable(Exception):
    """A ranged GET starting at or past the end of the object (HTTP 416)."""


def _create_only(params: dict[str, Any], **_: Any) -> None:
    params.setdefault("headers", {})["If-None-Match"] = "*"


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(2.0, 0.1 * 2**attempt))


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield first
        yield from rest
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


class _ObjectFile(PositionedReader):
    """Seekable read-only view of one object: a window of ``read_ahead`` bytes, refilled by
    ranged GETs; reads larger than the window fetch exactly what they ask for.

    ``refill`` reads the windows after the first (``store.read`` by default): a store with
    tiers in buckets of their own looks again in each, as the object may move meanwhile.
    """

    def __init__(
        self,
        store: S3BlobStore,
        key: str,
        refill: Callable[[str, int, int], bytes] | None = None,
    ) -> None:
        super().__init__()
        self._store = store
        self._key = key
        self._refill = refill or store.read
        self.name = key
        self._pos = 0
        self._window = b""
        self._window_start = 0
        self._size = self._first_fetch()

    def _first_fetch(self) -> int:
        store = self._store
        try:
            answer = store._call(
                "get", self._key, store.client.get_object,
                Bucket=store.bucket, Key=store._object(self._key),
                Range=f"bytes=0-{store.read_ahead - 1}",
            )  # fmt: skip
        except _RangeNotSatisfiable:  # an empty object has no byte 0
            return store.size(self._key)
        body = answer["Body"]
        try:
            self._window = body.read()
        except (BotoCoreError, OSError, ValueError):
            self._window = b""  # refetched on the first read
        finally:
            body.close()
        content_range = str(answer.get("ContentRange") or "")
        if "/" in content_range:
            return int(content_range.rsplit("/", 1)[1])
        return int(answer["ContentLength"])  # the whole object fitted

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if end <= self._pos:
            return b""
        w0, w1 = self._window_start, self._window_start + len(self._window)
        if not (w0 <= self._pos and end <= w1):
            want = max(end - self._pos, self._store.read_ahead)
            self._window_start = self._pos
            self._window = self._refill(self._key, self._pos, min(want, self._size - self._pos))
            w0 = self._window_start
        data = self._window[self._pos - w0 : end - w0]
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._window = b""
        super().close()


def from_url(url: str) -> S3BlobStore:
    """An :class:`S3BlobStore` from ``s3://BUCKET[/PREFIX][?PARAM=VALUE&...]``.

    Parameters (all optional): ``endpoint`` (``https://host:port`` of an S3-compatible store),
    ``region``, ``ca_bundle`` (PEM CA file for HTTPS), ``tier`` (StorageClass of new objects),
    ``multipart_threshold`` and ``part_size`` (bytes; suffixes K, M, G allowed),
    ``max_attempts``, ``connect_timeout``, ``read_timeout`` (seconds), ``page_size``,
    ``restore_days`` and ``restore_tier`` (restores of archived objects read).
    An unknown parameter is an error, so a typo never passes silently.
    """
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an S3 blob store URL: {url!r} (s3://BUCKET/PREFIX?...)")
    if "@" in parsed.netloc:
        # The URL is logged and shown in the settings; secrets belong to the AWS chain.
        raise ValueError("S3 credentials go in AWS_ACCESS_KEY_ID/... or ~/.aws, not in the URL")
    query = {
        name: values[-1] for name, values in parse_qs(parsed.query, strict_parsing=False).items()
    }
    kwargs: dict[str, Any] = {}
    parsers: dict[str, tuple[str, Callable[[str], Any]]] = {
        "endpoint": ("endpoint_url", str),
        "region": ("region", str),
        "ca_bundle": ("ca_bundle", str),
        "tier": ("storage_class", str),
        "multipart_threshold": ("multipart_threshold", _bytes),
        "part_size": ("part_size", _bytes),
        "max_attempts": ("max_attempts", int),
        "connect_timeout": ("connect_timeout", float),
        "read_timeout": ("read_timeout", float),
        "page_size": ("page_size", int),
        "restore_days": ("restore_days", int),
        "restore_tier": ("restore_tier", str),
    }
    for name, value in query.items():
        if name not in parsers:
            raise ValueError(
                f"unknown S3 blob store URL parameter {name!r} (known: {', '.join(parsers)})"
            )
        target, parse = parsers[name]
        kwargs[target] = parse(value)
    return S3BlobStore(parsed.netloc, unquote(parsed.path), **kwargs)


def _bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)
