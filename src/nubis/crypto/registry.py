"""Key provider URL scheme -> provider, as nubis.blobs.registry does for blob stores."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from nubis.errors import UnknownBackend
from nubis.ports.keys import KeyProvider

if TYPE_CHECKING:
    from nubis.crypto.index_keys import SecretSource
    from nubis.index.database import Index

_SUPPORTED = "file:///PATH, index+file:///PATH, index+env:VARIABLE"


def open_key_provider(
    url: str, *, durable: bool = True, create: bool = True, index: Index | None = None
) -> KeyProvider:
    """The key provider at ``url``.

    - ``file:///PATH``: a local keyring (nubis.crypto.local_keys);
    - ``index+file:///PATH`` or ``index+env:VARIABLE``: patient keys in ``index``, KEKs from a
      read-only secret file or environment variable (nubis.crypto.index_keys).

    A KMS provider plugs in here by scheme (e.g. ``awskms://``), imported lazily with an install
    hint, like the optional blob stores.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        from nubis.crypto.local_keys import LocalKeyring

        path = Path(unquote(parsed.path))
        return LocalKeyring(path, durable=durable, create=create, index=index)
    if parsed.scheme in ("index+file", "index+env"):
        from nubis.crypto.index_keys import IndexKeyring

        if index is None:
            raise UnknownBackend(f"key provider {url!r} keeps its keys in the index: none given")
        return IndexKeyring(index, kek_secret(url))
    raise UnknownBackend(f"unsupported key provider URL {url!r} (supported: {_SUPPORTED})")


def kek_secret(url: str) -> SecretSource:
    """Where an index keyring URL says its KEK secret is."""
    from nubis.crypto.index_keys import SecretSource

    parsed = urlparse(url)
    if parsed.scheme == "index+file" and parsed.path:
        return SecretSource(path=Path(unquote(parsed.path)))
    if parsed.scheme == "index+env" and parsed.path and not parsed.netloc:
        return SecretSource(env=parsed.path)
    raise UnknownBackend(f"not an index keyring URL: {url!r} (supported: {_SUPPORTED})")


def keyring_exists(url: str) -> bool:
    """Whether a local keyring is there (an archive that once encrypted); True for the others."""
    parsed = urlparse(url)
    return parsed.scheme != "file" or Path(unquote(parsed.path)).exists()
