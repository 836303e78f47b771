"""Key provider URL scheme -> provider, as nubis.blobs.registry does for blob stores."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from nubis.blobs.registry import UnknownBackend
from nubis.ports.keys import KeyProvider


def open_key_provider(url: str, *, durable: bool = True, create: bool = True) -> KeyProvider:
    """The key provider at ``url``: ``file:///PATH`` is a local keyring (nubis.crypto.local_keys).

    A KMS provider plugs in here by scheme (e.g. ``awskms://``), imported lazily with an install
    hint, like the optional blob stores.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from nubis.crypto.local_keys import LocalKeyring

        return LocalKeyring(Path(unquote(parsed.path)), durable=durable, create=create)
    raise UnknownBackend(f"unsupported key provider URL {url!r} (supported: file:///PATH)")


def keyring_exists(url: str) -> bool:
    """Whether a local keyring is there (an archive that once encrypted); True for a KMS."""
    parsed = urlparse(url)
    return parsed.scheme != "file" or Path(unquote(parsed.path)).exists()
