"""Webhook secrets at rest: AES-256-GCM under a key file, so the index alone (a dump, a backup)
does not reveal them.

A secret must be recoverable (the delivery job signs each body with it), so it cannot be hashed
the way passwords and API keys are. The archive's KeyProvider wraps data keys per (partition,
Patient ID) and can be shredded per patient; a webhook secret belongs to no patient, so it has
a key of its own: 32 random bytes in a file created 0600 on first use (``webhook_key``), which
every node of a PostgreSQL deployment is given, as it is given the audit signing key. The
subscription's name is the associated data: a ciphertext copied onto another subscription does
not decrypt.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nubis.errors import KeyUnavailable

__all__ = ["SecretBox", "new_secret"]

_PREFIX = "v1:"


def new_secret() -> str:
    """A fresh webhook secret (256 random bits), shown to the admin once."""
    return "whsec_" + secrets.token_urlsafe(32)


class SecretBox:
    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self._cached: bytes | None = None

    def _key(self) -> bytes:
        if self._cached is None:
            self._cached = self._read_or_create()
        return self._cached

    def _read_or_create(self) -> bytes:
        try:
            fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(AESGCM.generate_key(bit_length=256))
                f.flush()
                os.fsync(f.fileno())
        key = self.key_path.read_bytes()
        if len(key) != 32:
            raise KeyUnavailable(f"the webhook key file {self.key_path} is not a 32-byte key")
        return key

    def seal(self, name: str, secret: str) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self._key()).encrypt(nonce, secret.encode(), name.encode())
        return _PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, name: str, sealed: str) -> str:
        if not sealed.startswith(_PREFIX):
            raise KeyUnavailable(f"webhook {name}: its secret is in no format this version reads")
        raw = base64.b64decode(sealed[len(_PREFIX) :])
        try:
            return AESGCM(self._key()).decrypt(raw[:12], raw[12:], name.encode()).decode()
        except InvalidTag:
            raise KeyUnavailable(
                f"webhook {name}: its secret does not decrypt with {self.key_path} "
                "(another node's key file?)"
            ) from None
