"""Blob store URL scheme -> backend. Optional backends import lazily."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from nubis.errors import NubisError
from nubis.ports.blobs import BlobStore


class UnknownBackend(NubisError):
    http_status = 500


def open_blob_store(url: str, *, durable: bool = True) -> BlobStore:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from nubis.blobs.filesystem import FileBlobStore

        return FileBlobStore(Path(unquote(parsed.path)), durable=durable)
    raise UnknownBackend(f"unsupported blob store URL {url!r} (supported: file:///PATH)")
