"""The Ed25519 key that signs the audit chain's checkpoints, and its public half as text.

Part of the audit trail (nubis.security.audit), which re-exports these names.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from nubis.errors import StorageUnavailable

log = logging.getLogger("nubis.security.audit")


@dataclass(frozen=True)
class SigningKey:
    """The Ed25519 key that signs checkpoints; ``key_id`` names its public half."""

    private: Ed25519PrivateKey
    key_id: str

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @classmethod
    def load_or_create(cls, path: Path) -> SigningKey:
        """Load the key at ``path``, creating it (mode 0600) if missing.

        Creation is write-to-temporary then hard link, which fails if the file exists: two
        worker processes starting at once end up with one key, never a half-written file.
        """
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, pem)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        if path.stat().st_mode & 0o077:
            # Anyone who can read it can forge checkpoints: tighten rather than refuse to start.
            log.warning("audit signing key %s was readable by others; setting mode 0600", path)
            path.chmod(0o600)
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise StorageUnavailable(f"{path} is not an Ed25519 private key")
        key = cls(private, key_id(private.public_key()))
        pub_path = path.with_suffix(".pub")
        if not pub_path.exists():
            pub_path.write_text(public_key_text(key.public))
        return key


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 bytes of SHA-256 over the raw public key, hex."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_key_text(public: Ed25519PublicKey) -> str:
    """One line, ``ed25519 <base64 raw key> <key id>``: short enough to print and keep."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"ed25519 {base64.b64encode(raw).decode()} {key_id(public)}\n"


def load_public_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """Public keys from a file of :func:`public_key_text` lines (or a PEM public key)."""
    data = path.read_bytes()
    keys: dict[str, Ed25519PublicKey] = {}
    if data.lstrip().startswith(b"-----BEGIN"):
        public = serialization.load_pem_public_key(data)
        if not isinstance(public, Ed25519PublicKey):
            raise ValueError(f"{path} is not an Ed25519 public key")
        return {key_id(public): public}
    for line in data.decode().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "ed25519":
            public = Ed25519PublicKey.from_public_bytes(base64.b64decode(parts[1]))
            keys[key_id(public)] = public
    if not keys:
        raise ValueError(f"{path} holds no Ed25519 public key")
    return keys
