"""The local keyring: KEKs and patient keys in one file (mode 0600), the default key provider.

The file is JSON lines, appended under an exclusive ``flock`` and fsynced before a key is used:

- ``{"t": "keyring", "v": 1, "salt": ...}``: first line; the salt keys the HMAC of patient refs;
- ``{"t": "kek", "id": "k2", "key": ...}``: a key-encryption key; the last one is current;
- ``{"t": "patient", "ref": HMAC(salt, partition, Patient ID), "id": random, "kek": "k1",
  "key": AES-GCM(KEK, patient key)}``: a patient key, wrapped by the KEK current when it was made;
- ``{"t": "shredded", "id": ...}``: a tombstone, so reading a shredded patient's blob says so.

How keys wrap each other is nubis.crypto.patient_keys, shared with the index keyring: both
keys are needed to read a blob, so deleting a patient key (crypto-shredding) makes their blobs
unreadable, and a new KEK version takes effect for new blobs at once while old ones keep naming
theirs. The Patient ID itself is never written: only its keyed HMAC (the salt is in this file),
so the keyring names no patient to whoever reads it without knowing whom to look for.

Several processes (HTTP workers, the CLI) share the file: each re-reads it when its inode or
size changed (one ``stat`` per wrap or unwrap), so a rotation or a shred made by
``nubis keys`` reaches running workers on their next read. Shredding rewrites the file without
the patient's keys and renames it into place; retiring a KEK rewrites it with the patient keys
that KEK wrapped re-wrapped under the current one, and removing the KEK rewrites it without
that line (every rewrite stamps a new generation into the first line).

Given the archive's index, a shred also lists the shredded key ids in the index
(``erased_patient_keys``, as the index keyring does) before it rewrites the file, and
:meth:`LocalKeyring.forget_erased` shreds again any key of that list the file still holds.
The archive calls it whenever it opens (``nubis serve``, every CLI command, ``nubis restore``),
so a keyring put back from a copy older than a shred cannot undo it: the index, which every
data backup carries, is the record of what was shredded (docs/backup.md).

Limits, stated plainly: the old file's blocks may survive on the disk until overwritten (SSD
wear levelling, copy-on-write filesystems, snapshots), and so may any backup of the keyring;
keep the keyring off the data backups, on encrypted storage, and expire its backups, or use a
KMS provider. The KEKs sit in this file in the clear: its protection is the file mode and the
disk's; a KMS keeps them out of the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from nubis.crypto.patient_keys import KEY_SIZE, PatientKey, PatientKeyring, b64, unb64
from nubis.errors import BadRequest, KeyErased, KeyUnavailable
from nubis.index.schema import erased_patient_keys

if TYPE_CHECKING:
    from nubis.index.database import Index

__all__ = ["LocalKeyring"]

log = logging.getLogger(__name__)

_FORMAT = 1


class LocalKeyring(PatientKeyring):
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
    index : Index | None
        The archive's index, where shreds are listed (see the module docstring); None for a
        keyring read on its own (tests, tools).
    """

    def __init__(
        self, path: Path, *, durable: bool = True, create: bool = True, index: Index | None = None
    ) -> None:
        self.path = path
        self.index = index
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
        with self._view():
            return self._current_id

    def key_ids(self) -> list[str]:
        with self._view():
            return list(self._keks)

    def rotate(self) -> str:
        with self._locked_file():
            number = len(self._keks) + 1
            while f"k{number}" in self._keks:
                number += 1
            kek_id = f"k{number}"
            self._append({"t": "kek", "id": kek_id, "key": b64(os.urandom(KEY_SIZE)), **_at()})
        log.info("keyring: added key-encryption key %s; new blobs use it", kek_id)
        return kek_id

    def shred_patient(
        self,
        partition: str,
        patient_id: str,
        *,
        also: Callable[[Connection], object] | None = None,
    ) -> int:
        with self._locked_file():
            ref = self.patient_ref(partition, patient_id)
            doomed = {s for s, record in self._records.items() if record["ref"] == ref}
            if not doomed:
                return 0
            # Listed first: a shred the index does not know could be undone by a copy of
            # this file; one it knows and the file missed is done again at the next open.
            self._list_erased(doomed, also)
            self._drop(doomed)
        # The subject id is random and names no one; the Patient ID is never logged.
        log.warning("keyring: shredded %d patient key(s) %s", len(doomed), ", ".join(doomed))
        return len(doomed)

    def forget_erased(self) -> list[str]:
        """Shred again every key the index lists as shredded that this file still holds (a
        keyring put back from an older copy); returns their ids."""
        if self.index is None:
            return []
        with self.index.reading() as conn:
            erased = set(conn.scalars(select(erased_patient_keys.c.subject)))
        with self._locked_file():
            doomed = erased & set(self._records)
            if doomed:
                self._drop(doomed)
        if doomed:
            log.warning(
                "keyring: %d patient key(s) the index records as shredded were back in %s "
                "(a copy older than the shred?); shredded again: %s",
                len(doomed), self.path, ", ".join(sorted(doomed)),
            )  # fmt: skip
        return sorted(doomed)

    def _list_erased(
        self, subjects: set[str], also: Callable[[Connection], object] | None = None
    ) -> None:
        if self.index is None:
            return
        from nubis.index.upsert import upsert

        now = int(time.time() * 1000)

        def job(conn: Connection) -> None:
            for subject in sorted(subjects):
                upsert(conn, erased_patient_keys, "subject", {"subject": subject, "erased_at": now})
            if also is not None:
                also(conn)

        self.index.write(job)

    def _drop(self, doomed: set[str]) -> None:
        """Rewrite the file without the patient keys ``doomed``, with their tombstones."""
        kept = [
            line
            for line in self._lines
            if not (line.get("t") == "patient" and line.get("id") in doomed)
        ]
        kept += [{"t": "shredded", "id": s, **_at()} for s in sorted(doomed)]
        self._rewrite(kept)

    def retire(self, kek_id: str) -> int:
        with self._locked_file():
            self._check_retirable(kek_id)
            count = 0
            lines = []
            for line in self._lines:
                if line.get("t") == "patient" and line["kek"] == kek_id:
                    record = self._rewrapped(_patient_key(line))
                    line = {**line, "kek": record.kek_id, "key": b64(record.sealed), **_at()}
                    count += 1
                lines.append(line)
            if count:
                self._rewrite(lines)
        log.info("keyring: %d patient key(s) re-wrapped from %s to the current KEK", count, kek_id)
        return count

    def wrapped_by(self, kek_id: str) -> int:
        with self._view():
            return sum(1 for record in self._records.values() if record["kek"] == kek_id)

    def remove_kek(self, kek_id: str) -> None:
        """Delete a retired KEK from the file; refused while a patient key is wrapped by it.

        Blobs whose headers name it need it too: the caller checks those (nubis keys retire).
        """
        with self._locked_file():
            self._check_retirable(kek_id)
            if self.wrapped_by(kek_id):
                raise BadRequest(f"key-encryption key {kek_id} still wraps patient keys")
            self._rewrite(
                [x for x in self._lines if not (x.get("t") == "kek" and x["id"] == kek_id)]
            )
        log.warning("keyring: key-encryption key %s removed", kek_id)

    # ------------------------------------------------------------------ PatientKeyring
    @contextlib.contextmanager
    def _view(self) -> Iterator[None]:
        with self._lock:
            self._refresh()
            yield

    def _kek(self, kek_id: str) -> bytes:
        kek = self._keks.get(kek_id)
        if kek is None:
            raise KeyUnavailable(f"key-encryption key {kek_id!r} is not in the keyring")
        return kek

    def _current(self) -> str:
        return self._current_id

    def _ref_key(self) -> bytes:
        return self._salt

    def _live_key(self, ref: str) -> PatientKey:
        subject = self._patients.get(ref)
        if subject is None:
            with self._locked_file():
                subject = self._patients.get(ref)
                if subject is None:  # nor did another process make it while we waited
                    record = self._new_patient_key()
                    line = {"t": "patient", "ref": ref, "id": record.subject, "kek": record.kek_id}
                    self._append({**line, "key": b64(record.sealed), **_at()})
                    subject = record.subject
        return self._key(subject)

    def _key(self, subject: str) -> PatientKey:
        line = self._records.get(subject)
        if line is None:
            if subject in self._shredded:
                raise KeyErased("the object's patient key was erased (crypto-shredded)")
            raise KeyUnavailable("the object's patient key is not in the keyring")
        return _patient_key(line)

    def _check_retirable(self, kek_id: str) -> None:
        self._kek(kek_id)
        if kek_id == self._current_id:
            raise BadRequest(f"{kek_id} is the current key-encryption key: rotate first")

    # ------------------------------------------------------------------ the file
    def _reset(self) -> None:
        self._lines: list[dict[str, Any]] = []
        self._salt = b""
        self._keks: dict[str, bytes] = {}
        self._current_id = ""
        self._patients: dict[str, str] = {}  # ref -> subject id of the live key
        self._records: dict[str, dict[str, Any]] = {}  # subject id -> patient record
        self._shredded: set[str] = set()
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
            self._salt = unb64(line["salt"])
        elif kind == "kek":
            self._keks[line["id"]] = unb64(line["key"])
            self._current_id = line["id"]
        elif kind == "patient":
            self._records[line["id"]] = line
            self._patients[line["ref"]] = line["id"]
            self._shredded.discard(line["id"])
        elif kind == "shredded":
            self._shredded.add(line["id"])
            record = self._records.pop(line["id"], None)
            if record is not None and self._patients.get(record["ref"]) == line["id"]:
                del self._patients[record["ref"]]

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
        lines = [{**lines[0], "gen": secrets.token_hex(8)}, *lines[1:]]
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
                "salt": b64(os.urandom(KEY_SIZE)),
                "gen": secrets.token_hex(8),
                **_at(),
            },
            {"t": "kek", "id": "k1", "key": b64(os.urandom(KEY_SIZE)), **_at()},
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


def _patient_key(line: dict[str, Any]) -> PatientKey:
    return PatientKey(line["id"], line["kek"], unb64(line["key"]))


def _at() -> dict[str, str]:
    return {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
