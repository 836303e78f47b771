"""The key hierarchy every keyring shares: versioned KEKs wrap one random key per patient.

A keyring (the local file of nubis.crypto.local_keys, the index of nubis.crypto.index_keys)
decides where KEKs and patient keys are kept; this module decides what they mean, so a blob
written under one keyring kind has the same header and associated data as under the other:

- a patient key is AES-256-GCM(KEK, patient key) with ``"nubis patient key v1" || id || KEK id``
  as associated data, so a wrapped key moved to another id or relabelled with another KEK fails;
- a DEK is wrapped with AES-256-GCM under ``HKDF-SHA256(KEK || patient key)``, with the KEK id,
  the patient key id and the blob's associated data authenticated: both keys are needed to
  read a blob, so deleting a patient key (crypto-shredding) makes their blobs unreadable;
- a patient is found by ``HMAC-SHA256(ref key, partition || 0 || Patient ID)``, never by the
  Patient ID itself, so no keyring names a patient to whoever reads it without the ref key.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nubis.errors import BlobUnreadable, KeyUnavailable
from nubis.ports.keys import WrappedKey

__all__ = ["KEY_SIZE", "PatientKey", "PatientKeyring", "b64", "unb64"]

KEY_SIZE = 32
_NONCE_SIZE = 12


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@dataclass(frozen=True)
class PatientKey:
    """A stored patient key: its random id, the KEK that wraps it and the wrapped bytes."""

    subject: str
    kek_id: str
    sealed: bytes


class PatientKeyring:
    """Wrap and unwrap DEKs (the :class:`~nubis.ports.keys.KeyProvider` half that is crypto);
    subclasses say where the keys live.

    Hooks: :meth:`_view` (a consistent view of the keys for one operation), :meth:`_kek`,
    :meth:`_current`, :meth:`_ref_key`, :meth:`_live_key` (the patient's key, made on first use)
    and :meth:`_key` (a key by id, ``KeyErased`` once shredded).
    """

    def wrap(self, dek: bytes, *, partition: str, patient_id: str, aad: bytes) -> WrappedKey:
        with self._view():
            record = self._live_key(self.patient_ref(partition, patient_id))
            kek_id = self._current()
            cipher = self._dek_cipher(kek_id, record)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = cipher.encrypt(nonce, dek, _dek_aad(kek_id, record.subject, aad))
        return WrappedKey(kek_id, record.subject, nonce + sealed)

    def patient_key_id(self, partition: str, patient_id: str) -> str:
        with self._view():
            return self._live_key(self.patient_ref(partition, patient_id)).subject

    def unwrap(self, wrapped: WrappedKey, *, aad: bytes) -> bytes:
        with self._view():
            cipher = self._dek_cipher(wrapped.key_id, self._key(wrapped.subject))
        data = wrapped.ciphertext
        try:
            return cipher.decrypt(
                data[:_NONCE_SIZE],
                data[_NONCE_SIZE:],
                _dek_aad(wrapped.key_id, wrapped.subject, aad),
            )
        except (InvalidTag, ValueError):
            raise BlobUnreadable(
                "stored object failed its integrity check: its data key does not unwrap for "
                "this object (altered header, or a blob moved under another object)"
            ) from None

    def patient_ref(self, partition: str, patient_id: str) -> str:
        message = partition.encode() + b"\x00" + patient_id.encode()
        return hmac.new(self._ref_key(), message, hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ for subclasses
    def _new_patient_key(self) -> PatientKey:
        """A fresh random patient key, wrapped by the current KEK."""
        kek_id = self._current()
        subject = secrets.token_hex(16)
        return PatientKey(subject, kek_id, _seal(self._kek(kek_id), kek_id, subject))

    def _rewrapped(self, record: PatientKey) -> PatientKey:
        """``record`` wrapped by the current KEK instead of its own (KEK retirement)."""
        kek_id = self._current()
        plain = _open(self._kek(record.kek_id), record)
        return PatientKey(
            record.subject, kek_id, _seal(self._kek(kek_id), kek_id, record.subject, plain)
        )

    def _dek_cipher(self, kek_id: str, record: PatientKey) -> AESGCM:
        return _derive(
            kek_id,
            self._kek(kek_id),
            record.subject,
            record.kek_id,
            self._kek(record.kek_id),
            record.sealed,
        )

    @contextlib.contextmanager
    def _view(self) -> Iterator[None]:
        yield

    def _kek(self, kek_id: str) -> bytes:
        raise NotImplementedError

    def _current(self) -> str:
        raise NotImplementedError

    def _ref_key(self) -> bytes:
        raise NotImplementedError

    def _live_key(self, ref: str) -> PatientKey:
        raise NotImplementedError

    def _key(self, subject: str) -> PatientKey:
        raise NotImplementedError


# Keyed by everything the wrapping key depends on, so a shredded or re-wrapped patient key is
# never served from here: the caller looks the record up first, every time.
@functools.lru_cache(maxsize=4096)
def _derive(
    kek_id: str, kek: bytes, subject: str, patient_kek_id: str, patient_kek: bytes, sealed: bytes
) -> AESGCM:
    patient_key = _open(patient_kek, PatientKey(subject, patient_kek_id, sealed))
    info = b"nubis dek wrapping v1\x00" + kek_id.encode() + b"\x00" + subject.encode()
    return AESGCM(HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=info).derive(kek + patient_key))


def _seal(kek: bytes, kek_id: str, subject: str, patient_key: bytes | None = None) -> bytes:
    nonce = os.urandom(_NONCE_SIZE)
    plain = os.urandom(KEY_SIZE) if patient_key is None else patient_key
    return nonce + AESGCM(kek).encrypt(nonce, plain, _patient_aad(subject, kek_id))


def _open(kek: bytes, record: PatientKey) -> bytes:
    blob = record.sealed
    try:
        return AESGCM(kek).decrypt(
            blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], _patient_aad(record.subject, record.kek_id)
        )
    except (InvalidTag, ValueError):
        raise KeyUnavailable("a stored patient key does not authenticate") from None


def _dek_aad(kek_id: str, subject: str, aad: bytes) -> bytes:
    return b"nubis dek v1\x00" + kek_id.encode() + b"\x00" + subject.encode() + b"\x00" + aad


def _patient_aad(subject: str, kek_id: str) -> bytes:
    return b"nubis patient key v1\x00" + subject.encode() + b"\x00" + kek_id.encode()
