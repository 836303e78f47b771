"""Blob store URL scheme -> backend. Optional backends import lazily.

- ``file:///PATH``: a local folder (nubis.blobs.filesystem).
- ``s3://BUCKET[/PREFIX]?endpoint=https://...&region=...&ca_bundle=/path``: an S3-compatible
  object store (nubis.blobs.s3, extra ``[s3]``); every parameter is listed in
  :func:`nubis.blobs.s3.from_url`. Credentials come from the usual AWS variables and files.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from nubis.errors import UnknownBackend
from nubis.logs import redact_url
from nubis.ports.blobs import BlobStore


def open_blob_store(url: str, *, durable: bool = True) -> BlobStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from nubis.blobs.filesystem import FileBlobStore

        return FileBlobStore(Path(unquote(parsed.path)), durable=durable)
    if parsed.scheme == "s3":
        # A PUT that answered 200 is durable in the store: ``durable`` has nothing to add.
        try:
            from nubis.blobs.s3 import from_url
        except ImportError as exc:
            raise UnknownBackend(f"{exc} (blob store URL {redact_url(url)!r})") from None
        try:
            return from_url(url)
        except ValueError as exc:
            raise UnknownBackend(str(exc)) from None
    raise UnknownBackend(
        f"unsupported blob store URL {redact_url(url)!r} "
        "(supported: file:///PATH, s3://BUCKET/PREFIX?endpoint=...)"
    )
