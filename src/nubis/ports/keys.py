"""The key provider port: who holds the keys that wrap each blob's data key.

Encryption at rest is envelope encryption (see nubis.blobs.encrypted): every blob has its own
random data key (DEK), and only a *wrapped* DEK is stored in the blob's header. A key provider
wraps and unwraps DEKs. Two key levels sit behind it:

- **key-encryption keys (KEKs)**, versioned: ``current_key_id`` names the one new blobs use;
  older versions stay, so old blobs remain readable after a rotation;
- **patient keys**, one per (partition, Patient ID): the wrapping key of a DEK depends on both
  the KEK and the patient key, so deleting a patient key (crypto-shredding) makes every blob of
  that patient unreadable, wherever copies of the blobs went.

The provider keeps the keys: the local keyring in a file; the index keyring keeps wrapped
patient keys in the index and its KEKs in a secret outside it. Either way a copy of the blobs
and the index without the provider's KEKs is ciphertext only. Patient IDs are PHI: a provider
must not store, log or put them in key ids in the clear (both keyrings keep a keyed HMAC).

Implementations are synchronous, like the other ports (docs/architecture.md), and thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Connection


@dataclass(frozen=True)
class WrappedKey:
    """A wrapped data key and the names of the keys that wrap it, as stored in a blob header.

    Attributes
    ----------
    key_id : str
        Version of the key-encryption key (e.g. ``k2``); ASCII, at most 255 bytes.
    subject : str
        Opaque id of the patient key (random, not derived from the Patient ID in any way a
        reader of the header could reverse); ASCII, at most 255 bytes.
    ciphertext : bytes
        The wrapped DEK (provider-specific format, at most 65,535 bytes).
    """

    key_id: str
    subject: str
    ciphertext: bytes


class KeyProvider(Protocol):
    @property
    def current_key_id(self) -> str:
        """The KEK version :meth:`wrap` uses now."""

    def wrap(self, dek: bytes, *, partition: str, patient_id: str, aad: bytes) -> WrappedKey:
        """Wrap ``dek`` for the patient, creating the patient's key on first use.

        ``aad`` is authenticated, not stored: :meth:`unwrap` must be given the same bytes.
        Raises ``nubis.errors.KeyUnavailable`` if the keys cannot be reached.
        """

    def patient_key_id(self, partition: str, patient_id: str) -> str:
        """The id of the patient's key, which the header of a blob wrapped for the patient
        names (``WrappedKey.subject``); the key is made on first use, as :meth:`wrap` makes it.
        Raises ``KeyUnavailable`` as :meth:`wrap` does."""

    def unwrap(self, wrapped: WrappedKey, *, aad: bytes) -> bytes:
        """The DEK, or ``KeyErased`` (patient key shredded), ``KeyUnavailable`` (KEK or provider
        missing), ``BlobUnreadable`` (wrapped key or ``aad`` does not authenticate)."""

    def rotate(self) -> str:
        """Add a new KEK version and make it current; returns its id. No blob is rewritten."""

    def shred_patient(
        self,
        partition: str,
        patient_id: str,
        *,
        also: Callable[[Connection], object] | None = None,
    ) -> int:
        """Delete every key of the patient (crypto-shredding); returns how many were deleted.
        ``also`` runs in the index transaction that records the keys as erased, when some
        were (the replication outbox's entries): both commit or neither does."""

    def key_ids(self) -> list[str]:
        """Every KEK version held, oldest first."""

    def retire(self, kek_id: str) -> int:
        """Re-wrap every patient key that ``kek_id`` wraps under the current KEK; returns how
        many. Refused (``BadRequest``) for the current KEK. Blobs whose headers name
        ``kek_id`` still need it afterwards: their DEKs are wrapped under it."""

    def wrapped_by(self, kek_id: str) -> int:
        """How many patient keys ``kek_id`` wraps."""
