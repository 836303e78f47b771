"""The local keyring: KEKs and patient keys in one file (mode 0600), the default key provider.

The file is JSON lines, appended under an exclusive ``flock`` and fsynced before a key is used:

- ``{"t": "keyring", "v": 1, "salt": ...}``: first line; the salt keys the HMAC of patient refs;
- ``{"t": "kek", "id": "k2", "key": ...}``: a key-encryption key; the last one is current;
- ``{"t": "patient", "ref": HMAC(salt, partition, Patient ID), "id": random, "kek": "k1",
  "key": AES-GCM(KEK, patient key)}``: a patient key, wrapped by the KEK current when it was made;
- ``{"t": "shredded", "id": ...}``: a tombstone, so reading a shredded patient's blob says so.

A DEK is wrapped with AES-256-GCM under ``HKDF-SHA256(KEK || patient key)``, with the KEK id,
the patient key id and the blob's associated data authenticated: both keys are needed to read
a blob, so deleting a patient key (crypto-shredding) makes their blobs unreadable, and a new KEK
version takes effect for new blobs at once while old ones keep naming theirs.

The Patient ID itself is never written: only its keyed HMAC (the salt is in this file), so the
keyring names no patient to whoever reads it without knowing whom to look for.

Several processes (HTTP workers, the CLI) share the file: each re-reads it when its inode or
size changed (one ``stat`` per wrap or unwrap), so a rotation or a shred made by
``nubis keys`` reaches running workers on their next read. Shredding rewrites the file without
the patient's keys and renames it into place. Limits, stated plainly: the old file's blocks may
survive on the disk until overwritten (SSD wear levelling, copy-on-write filesystems, snapshots),
and so may any backup of the keyring; keep the keyring off the data backups, on encrypted
storage, and expire its backups, or use a KMS provider. The KEKs sit in this file in the clear:
its protection is the file mode and the disk's; a KMS keeps them out of the host.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nubis.errors import BlobUnreadable, KeyErased, KeyUnavailable
from nubis.ports.keys import WrappedKey

__all__ = ["LocalKeyring"]

log = logging.getLogger(__name__)

_KEY_SIZE = 32
_NONCE_SIZE = 12
_FORMAT = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class LocalKeyring:
    """A :class:`nubis.ports.keys.KeyProvider` backed by a local file.

    Parameters
    ----------
    path : Path
        The keyring file; created (mode 0600, with a first KEK ``k1``) if missing and
        ``create`` is true.
    durable : bool
        fsync the file (and its folder) before a new key is used. A key lost in a crash after
        its blob was acknowledged would lose the blob, so only throwaway archives turn it off.
    create : bool
        Create a missing keyring; otherwise a missing file is :class:`KeyUnavailable`.
    """

    def __init__(self, path: Path, *, durable: bool = True, create: bool = True) -> None:
        self.path = path
        self.durable = durable
        self._lock = threading.RLock()
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._reset()
        if not path.exists():
            if not create:
                raise KeyUnavailable(f"keyring {path} does not exist")
            self._create()
        self._check_mode()
        self._refresh()

    # ------------------------------------------------------------------ KeyProvider
    @property
    def current_key_id(self) -> str:
        with self._lock:
            self._refresh()
            return self._current

    def key_ids(self) -> list[str]:
        with self._lock:
            self._refresh()
            return list(self._keks)

    def wrap(self, dek: bytes, *, partition: str, patient_id: str, aad: bytes) -> WrappedKey:
        with self._lock:
            self._refresh()
            ref = self._ref(partition, patient_id)
            subject = self._patients.get(ref)
            if subject is None:
                subject = self._new_patient_key(ref)
            kek_id = self._current
            cipher = self._wrapping_cipher(kek_id, subject)
        nonce = os.urandom(_NONCE_SIZE)
        sealed = cipher.encrypt(nonce, dek, _dek_aad(kek_id, subject, aad))
        return WrappedKey(kek_id, subject, nonce + sealed)

    def unwrap(self, wrapped: WrappedKey, *, aad: bytes) -> bytes:
        with self._lock:
            self._refresh()
            cipher = self._wrapping_cipher(wrapped.key_id, wrapped.subject)
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

    def rotate(self) -> str:
        with self._locked_file():
            number = len(self._keks) + 1
            while f"k{number}" in self._keks:
                number += 1
            kek_id = f"k{number}"
            self._append({"t": "kek", "id": kek_id, "key": _b64(os.urandom(_KEY_SIZE)), **_at()})
        log.info("keyring: added key-encryption key %s; new blobs use it", kek_id)
        return kek_id

    def shred_patient(self, partition: str, patient_id: str) -> int:
        with self._locked_file():
            ref = self._ref(partition, patient_id)
            doomed = {s for s, record in self._records.items() if record["ref"] == ref}
            if not doomed:
                return 0
            kept = [
                line
                for line in self._lines
                if not (line.get("t") == "patient" and line.get("id") in doomed)
            ]
            kept += [{"t": "shredded", "id": s, **_at()} for s in sorted(doomed)]
            kept[0] = {**kept[0], "gen": secrets.token_hex(8)}
            self._rewrite(kept)
        # The subject id is random and names no one; the Patient ID is never logged.
        log.warning("keyring: shredded %d patient key(s) %s", len(doomed), ", ".join(doomed))
        return len(doomed)

    # ------------------------------------------------------------------ keys
    def _ref(self, partition: str, patient_id: str) -> str:
        message = partition.encode() + b"\x00" + patient_id.encode()
        return hmac.new(self._salt, message, hashlib.sha256).hexdigest()

    def _new_patient_key(self, ref: str) -> str:
        with self._locked_file():
            subject = self._patients.get(ref)
            if subject is not None:  # another process made it while we waited for the lock
                return subject
            subject = secrets.token_hex(16)
            kek_id = self._current
            nonce = os.urandom(_NONCE_SIZE)
            wrapped = AESGCM(self._keks[kek_id]).encrypt(
                nonce, os.urandom(_KEY_SIZE), _patient_aad(subject, kek_id)
            )
            record = {"t": "patient", "ref": ref, "id": subject, "kek": kek_id}
            self._append({**record, "key": _b64(nonce + wrapped), **_at()})
            return subject

    def _wrapping_cipher(self, kek_id: str, subject: str) -> AESGCM:
        cached = self._ciphers.get((kek_id, subject))
        if cached is not None:
            return cached
        kek = self._keks.get(kek_id)
        if kek is None:
            raise KeyUnavailable(f"key-encryption key {kek_id!r} is not in the keyring")
        record = self._records.get(subject)
        if record is None:
            if subject in self._shredded:
                raise KeyErased("the object's patient key was erased (crypto-shredded)")
            raise KeyUnavailable("the object's patient key is not in the keyring")
        patient_kek = self._keks.get(record["kek"])
        if patient_kek is None:
            raise KeyUnavailable(f"key-encryption key {record['kek']!r} is not in the keyring")
        blob = _unb64(record["key"])
        try:
            patient_key = AESGCM(patient_kek).decrypt(
                blob[:_NONCE_SIZE], blob[_NONCE_SIZE:], _patient_aad(subject, record["kek"])
            )
        except InvalidTag:
            raise KeyUnavailable("a patient key in the keyring does not authenticate") from None
        info = b"nubis dek wrapping v1\x00" + kek_id.encode() + b"\x00" + subject.encode()
        key = HKDF(hashes.SHA256(), _KEY_SIZE, salt=None, info=info).derive(kek + patient_key)
        cipher = AESGCM(key)
        self._ciphers[(kek_id, subject)] = cipher
        return cipher

    # ------------------------------------------------------------------ the file
    def _reset(self) -> None:
        self._lines: list[dict[str, Any]] = []
        self._salt = b""
        self._keks: dict[str, bytes] = {}
        self._current = ""
        self._patients: dict[str, str] = {}  # ref -> subject id of the live key
        self._records: dict[str, dict[str, Any]] = {}  # subject id -> patient record
        self._shredded: set[str] = set()
        self._ciphers: dict[tuple[str, str], AESGCM] = {}
        self._offset = 0
        self._head = b""  # the first line as read: its generation tells rewrites apart

    def _check_mode(self) -> None:
        mode = self.path.stat().st_mode
        if mode & 0o077:
            raise KeyUnavailable(
                f"keyring {self.path} is accessible to other users (mode {mode & 0o777:o}); "
                f"chmod 600 it"
            )

    def _refresh(self) -> None:
        """Pick up what other processes appended or rewrote since the last look."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise KeyUnavailable(f"keyring {self.path} is missing") from None
        identity = (st.st_dev, st.st_ino)
        if identity == self._identity and st.st_size == self._offset:
            return
        with open(self.path, "rb") as f:
            # A rewrite (shred) gives a new inode, but the number of a freed one may come back:
            # each rewrite also stamps a new generation into the first line, checked here.
            same = identity == self._identity and st.st_size > self._offset
            if not same or f.read(len(self._head)) != self._head:
                self._reset()
                self._identity = identity
            f.seek(self._offset)
            tail = f.read()
        # A line being appended by another process may be incomplete: take whole lines only.
        complete = tail[: tail.rfind(b"\n") + 1]
        if self._offset == 0:
            self._head = complete[: complete.find(b"\n") + 1]
        for raw in complete.splitlines():
            if raw.strip():
                self._apply(json.loads(raw))
        self._offset += len(complete)

    def _apply(self, line: dict[str, Any]) -> None:
        self._lines.append(line)
        kind = line.get("t")
        if kind == "keyring":
            if line.get("v") != _FORMAT:
                raise KeyUnavailable(f"keyring {self.path} is in an unknown format")
            self._salt = _unb64(line["salt"])
        elif kind == "kek":
            self._keks[line["id"]] = _unb64(line["key"])
            self._current = line["id"]
        elif kind == "patient":
            self._records[line["id"]] = line
            self._patients[line["ref"]] = line["id"]
            self._shredded.discard(line["id"])
        elif kind == "shredded":
            self._shredded.add(line["id"])
            record = self._records.pop(line["id"], None)
            if record is not None and self._patients.get(record["ref"]) == line["id"]:
                del self._patients[record["ref"]]
            self._ciphers = {k: v for k, v in self._ciphers.items() if k[1] != line["id"]}

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[None]:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._lock:
                self._refresh()
                yield
        finally:
            os.close(fd)  # releases the flock

    def _append(self, line: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, json.dumps(line, separators=(",", ":")).encode() + b"\n")
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._refresh()

    def _rewrite(self, lines: list[dict[str, Any]]) -> None:
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(
                fd, b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in lines)
            )
            os.fsync(fd)  # always: a rewrite replaces the only copy of every key
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        _fsync_dir(self.path.parent)
        self._refresh()

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            {
                "t": "keyring",
                "v": _FORMAT,
                "salt": _b64(os.urandom(_KEY_SIZE)),
                "gen": secrets.token_hex(8),
                **_at(),
            },
            {"t": "kek", "id": "k1", "key": _b64(os.urandom(_KEY_SIZE)), **_at()},
        ]
        temp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"".join(json.dumps(x).encode() + b"\n" for x in lines))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, self.path)  # create-only: another process may have made it first
            _fsync_dir(self.path.parent)
            log.info("keyring: created %s with key-encryption key k1", self.path)
        except FileExistsError:
            pass
        finally:
            os.unlink(temp)


def _dek_aad(kek_id: str, subject: str, aad: bytes) -> bytes:
    return b"nubis dek v1\x00" + kek_id.encode() + b"\x00" + subject.encode() + b"\x00" + aad


def _patient_aad(subject: str, kek_id: str) -> bytes:
    return b"nubis patient key v1\x00" + subject.encode() + b"\x00" + kek_id.encode()


def _at() -> dict[str, str]:
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
