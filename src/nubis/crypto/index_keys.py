"""The index keyring: patient keys in the index database, KEKs in a read-only secret.

Nodes that share a PostgreSQL index (issue 5) share their patient keys through it, so a node
needs no writable key file: only the KEK secret, the same on every node (a mounted secret file,
``keyring = index+file:///run/secrets/nubis-keks``, or an environment variable,
``keyring = index+env:NUBIS_KEKS``). The key hierarchy and the blob format are those of the
local keyring (nubis.crypto.patient_keys); where the keys live differs:

- **The secret** holds ``ref=`` (the HMAC key of patient references, never changed) and the KEK
  versions ``k1=``, ``k2=``...; the last is current. It is text, one ``name=base64`` entry per
  line or separated by spaces, ``#`` comments; ``nubis keys new-secret`` writes a first one.
  A secret file is re-read when it changes (one ``stat`` per wrap or unwrap), so a rotated
  secret reaches a running node without a restart.
- **The index** holds, per patient, a random key wrapped by a KEK (``patient_keys``; the row is
  found by HMAC(ref, partition, Patient ID), never the Patient ID). A copy of the database
  without the secret yields no key.
- **Rotation** is a new secret with one more KEK (``nubis keys rotate`` writes it); new blobs and
  new patient keys use it as soon as a node reads it, old blobs keep naming theirs.
- **Crypto-shredding** deletes the patient's rows and leaves their ids in
  ``erased_patient_keys``, so a read answers "erased" (410) on every node at once.
- **Retirement** (``nubis keys retire kN``) re-wraps every patient key wrapped by kN under the
  current KEK and records kN in ``retired_keks``: a node still running an old secret in which
  kN is current then refuses to wrap rather than write keys or blobs that need it.

Every wrap reads the patient's row (one indexed lookup), so a store never uses a key shredded
before it began. An unwrap reuses a row it read less than ``cache_seconds`` (1 s) ago: a study
of a hundred objects costs one lookup, not a hundred (about 0.5 ms each on PostgreSQL). A shred
therefore returns only after that long, so when ``nubis keys shred-patient`` returns no node
decrypts the patient's objects any more.

Two nodes making the same patient's first key at once end with one key: the row is inserted
with ``ON CONFLICT (ref) DO NOTHING`` and read back in the same transaction, so the loser uses
the winner's key. Key writes (new key, shred, retirement) also take turns on a
transaction-scoped advisory lock on PostgreSQL (SQLite has one writer), so a retirement and a
stale node's new key are ordered one way or the other, never interleaved.

Limits, stated plainly: a deleted row may survive in the database's free space, WAL, replicas
and backups until they are overwritten or expire; it is wrapped by a KEK, so it is readable only
together with a secret that still holds that KEK.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy import delete as sql_delete
from sqlalchemy.dialects import postgresql, sqlite

from nubis.crypto.patient_keys import KEY_SIZE, PatientKey, PatientKeyring, b64, unb64
from nubis.errors import BadRequest, KeyErased, KeyUnavailable
from nubis.index.database import Index
from nubis.index.schema import erased_patient_keys, patient_keys, retired_keks

__all__ = ["IndexKeyring", "KekSecret", "SecretSource"]

log = logging.getLogger(__name__)

# PostgreSQL advisory lock of key writes; nubis.index.database lists the others (0x6E75_62xx).
KEYS_LOCK = 0x6E75_6B01
_KEK_ID = re.compile(r"k([1-9][0-9]{0,8})")
# Patient keys re-wrapped per transaction by a retirement: short enough not to hold the
# SQLite writer (and every store behind it) for long.
_RETIRE_BATCH = 256
# Patient keys an unwrap may reuse (see the module docstring), per process.
_CACHED_KEYS = 4096


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class KekSecret:
    """The content of a KEK secret: the ref key and the KEK versions, oldest first."""

    ref_key: bytes
    keks: tuple[tuple[str, bytes], ...]

    def __repr__(self) -> str:
        return f"KekSecret(ids={self.ids})"  # never the keys (tracebacks, test reports)

    @classmethod
    def new(cls) -> KekSecret:
        return cls(os.urandom(KEY_SIZE), (("k1", os.urandom(KEY_SIZE)),))

    @classmethod
    def parse(cls, text: str, origin: str) -> KekSecret:
        """Parse ``text``; any doubt is :class:`KeyUnavailable` naming ``origin``, never a
        guess (a wrong ref key would give every patient a second key, out of a shred's reach)."""
        ref: bytes | None = None
        keks: list[tuple[str, bytes]] = []
        words = " ".join(line.split("#", 1)[0] for line in text.splitlines()).split()
        for word in words:
            name, sep, value = word.partition("=")
            try:
                key = unb64(value)
            except ValueError:
                key = b""
            if not sep or len(key) != KEY_SIZE:
                raise KeyUnavailable(
                    f"KEK secret {origin}: {name!r} is not NAME=<32 bytes, base64>"
                )
            if name == "ref" and ref is None:
                ref = key
                continue
            number = _KEK_ID.fullmatch(name)
            if number is None or (keks and int(number[1]) <= int(keks[-1][0][1:])):
                raise KeyUnavailable(
                    f"KEK secret {origin}: {name!r} is not ref (once) or the next KEK version "
                    "(k1, k2... in increasing order)"
                )
            keks.append((name, key))
        if ref is None or not keks:
            raise KeyUnavailable(f"KEK secret {origin} needs ref= and at least one KEK (k1=)")
        return cls(ref, tuple(keks))

    def render(self) -> str:
        lines = [
            "# nubis KEK secret (keyring index+file:// or index+env:): the same on every node,",
            "# read-only. ref keys the patient references: never change it. The last kN is",
            "# current; remove a kN only once `nubis keys retire kN` says nothing needs it.",
            f"ref={b64(self.ref_key)}",
            *(f"{kek_id}={b64(key)}" for kek_id, key in self.keks),
        ]
        return "\n".join(lines) + "\n"

    @property
    def ids(self) -> list[str]:
        return [kek_id for kek_id, _ in self.keks]

    @property
    def current(self) -> str:
        return self.keks[-1][0]

    def get(self, kek_id: str) -> bytes | None:
        return dict(self.keks).get(kek_id)

    def rotated(self) -> KekSecret:
        """This secret and one more KEK version, which becomes current."""
        kek_id = f"k{int(self.current[1:]) + 1}"
        return replace(self, keks=(*self.keks, (kek_id, os.urandom(KEY_SIZE))))

    def without(self, kek_id: str) -> KekSecret:
        if kek_id == self.current:
            raise BadRequest(f"{kek_id} is the current key-encryption key: rotate first")
        return replace(self, keks=tuple(k for k in self.keks if k[0] != kek_id))


class SecretSource:
    """Where a node reads its KEK secret: a file (re-read when it changes) or an environment
    variable (read once: a process's environment does not change)."""

    def __init__(self, *, path: Path | None = None, env: str | None = None) -> None:
        if (path is None) == (env is None):
            raise ValueError("a KEK secret is a file or an environment variable")
        self.path = path
        self.env = env
        self.origin = str(path) if path is not None else f"${env}"
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._secret: KekSecret | None = None

    def get(self) -> KekSecret:
        if self.path is None:
            if self._secret is None:
                text = os.environ.get(str(self.env))
                if not text:
                    raise KeyUnavailable(f"KEK secret {self.origin} is not set")
                self._secret = KekSecret.parse(text, self.origin)
            return self._secret
        try:
            st = os.stat(self.path)  # follows the symlink a Kubernetes secret update swaps
        except OSError as exc:
            raise KeyUnavailable(
                f"KEK secret {self.origin} cannot be read: {exc.strerror}"
            ) from None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if stamp != self._stamp or self._secret is None:
                # Writable by others is as bad as readable: a KEK slipped in by someone else
                # would wrap new keys under a key they know.
                if st.st_mode & 0o027:
                    raise KeyUnavailable(
                        f"KEK secret {self.origin} has mode {st.st_mode & 0o777:o}: others may "
                        "read it or a group may write it; chmod 0640 or stricter (Kubernetes: "
                        "defaultMode 0440)"
                    )
                self._secret = KekSecret.parse(self.path.read_text(), self.origin)
                self._stamp = stamp
            return self._secret


class IndexKeyring(PatientKeyring):
    """A :class:`nubis.ports.keys.KeyProvider` with patient keys in ``index`` and KEKs from
    ``secret`` (see the module docstring). Writes need the index open (``Index.open``)."""

    def __init__(self, index: Index, secret: SecretSource, *, cache_seconds: float = 1.0) -> None:
        self.index = index
        self.secret = secret
        self.cache_seconds = cache_seconds
        self._snapshot = secret.get()  # fail at start, not at the first store
        self._cache: dict[str, tuple[float, PatientKey]] = {}  # subject -> (until, key)
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------ KeyProvider
    @property
    def current_key_id(self) -> str:
        return self.secret.get().current

    def key_ids(self) -> list[str]:
        return self.secret.get().ids

    def rotate(self) -> str:
        raise BadRequest(
            f"the KEKs of this keyring are in its secret ({self.secret.origin}), which nubis "
            "only reads: `nubis keys rotate` writes a new secret with one more KEK to give "
            "every node"
        )

    def shred_patient(
        self,
        partition: str,
        patient_id: str,
        *,
        also: Callable[[Connection], object] | None = None,
    ) -> int:
        with self._view():
            ref = self.patient_ref(partition, patient_id)

        def job(conn: Connection) -> list[str]:
            Index.serialize(conn, KEYS_LOCK)
            where = patient_keys.c.ref == ref
            doomed = list(conn.scalars(select(patient_keys.c.subject).where(where)))
            if doomed:
                conn.execute(sql_delete(patient_keys).where(where))
                now = _now_ms()
                rows = [{"subject": s, "erased_at": now} for s in doomed]
                conn.execute(insert(erased_patient_keys), rows)
                if also is not None:
                    also(conn)
            return doomed

        doomed = self.index.write(job)
        if doomed:
            # The subject id is random and names no one; the Patient ID is never logged.
            log.warning("keyring: shredded %d patient key(s) %s", len(doomed), ", ".join(doomed))
            with self._cache_lock:
                for subject in doomed:
                    self._cache.pop(subject, None)
            time.sleep(self.cache_seconds)  # until no node can still hold them
        return len(doomed)

    # ------------------------------------------------------------------ retirement
    def retire(self, kek_id: str) -> int:
        """Re-wrap every patient key wrapped by ``kek_id`` under the current KEK, after marking
        ``kek_id`` retired (so no node wraps under it again); returns how many were re-wrapped.

        Blobs whose headers name ``kek_id`` still need it: see ``nubis keys retire``.
        """
        with self._view():
            self._kek(kek_id)  # an unknown KEK wraps nothing nubis could re-wrap
            if kek_id == self._current():
                raise BadRequest(f"{kek_id} is the current key-encryption key: rotate first")

        def mark(conn: Connection) -> None:
            Index.serialize(conn, KEYS_LOCK)
            row = {"kek_id": kek_id, "retired_at": _now_ms()}
            conn.execute(_dialect(conn).insert(retired_keks).values(row).on_conflict_do_nothing())

        self.index.write(mark)
        count = 0
        while batch := self._wrapped_by(kek_id, _RETIRE_BATCH):
            # Re-wrapped outside the write (no crypto in the SQLite writer's thread); a key
            # shredded in between is not brought back: the update matches no row.
            with self._view():
                fresh = [self._rewrapped(record) for record in batch]
            count += self.index.write(partial(_replace, old_kek_id=kek_id, fresh=fresh))
        log.info("keyring: %d patient key(s) re-wrapped from %s to the current KEK", count, kek_id)
        return count

    def wrapped_by(self, kek_id: str) -> int:
        """How many patient keys ``kek_id`` wraps."""
        with self.index.reading() as conn:
            where = patient_keys.c.kek_id == kek_id
            return conn.execute(
                select(func.count()).select_from(patient_keys).where(where)
            ).scalar_one()

    def _wrapped_by(self, kek_id: str, limit: int) -> list[PatientKey]:
        with self.index.reading() as conn:
            rows = conn.execute(
                select(patient_keys.c.subject, patient_keys.c.kek_id, patient_keys.c.wrapped)
                .where(patient_keys.c.kek_id == kek_id)
                .limit(limit)
            )
            return [PatientKey(s, k, bytes(w)) for s, k, w in rows]

    # ------------------------------------------------------------------ PatientKeyring
    @contextmanager
    def _view(self) -> Iterator[None]:
        self._snapshot = self.secret.get()
        yield

    def _kek(self, kek_id: str) -> bytes:
        kek = self._snapshot.get(kek_id)
        if kek is None:
            raise KeyUnavailable(
                f"key-encryption key {kek_id!r} is not in the KEK secret {self.secret.origin}"
            )
        return kek

    def _current(self) -> str:
        return self._snapshot.current

    def _ref_key(self) -> bytes:
        return self._snapshot.ref_key

    def _live_key(self, ref: str) -> PatientKey:
        current = self._current()
        retired = select(retired_keks.c.kek_id).where(retired_keks.c.kek_id == current)
        with self.index.reading() as conn:
            row = conn.execute(
                select(
                    patient_keys.c.subject,
                    patient_keys.c.kek_id,
                    patient_keys.c.wrapped,
                    retired.exists().label("retired"),
                ).where(patient_keys.c.ref == ref)
            ).first()
        if row is None:
            fresh = self._new_patient_key()
            return self.index.write(lambda conn: _insert(conn, ref, fresh))
        if row.retired:
            raise _stale(current)
        return PatientKey(row.subject, row.kek_id, bytes(row.wrapped))

    def _key(self, subject: str) -> PatientKey:
        now = time.monotonic()
        until, cached = self._cache.get(subject, (0.0, None))
        # A retirement re-wraps rows: once their old KEK left the secret, read them again.
        if cached is not None and now < until and self._snapshot.get(cached.kek_id) is not None:
            return cached
        with self.index.reading() as conn:
            row = conn.execute(
                select(patient_keys.c.kek_id, patient_keys.c.wrapped).where(
                    patient_keys.c.subject == subject
                )
            ).first()
            if row is None:
                erased = conn.scalar(
                    select(erased_patient_keys.c.subject).where(
                        erased_patient_keys.c.subject == subject
                    )
                )
        if row is not None:
            record = PatientKey(subject, row.kek_id, bytes(row.wrapped))
            with self._cache_lock:
                self._cache.pop(subject, None)
                if len(self._cache) >= _CACHED_KEYS:
                    del self._cache[next(iter(self._cache))]  # the longest held
                self._cache[subject] = (now + self.cache_seconds, record)
            return record
        if erased is not None:
            raise KeyErased("the object's patient key was erased (crypto-shredded)")
        raise KeyUnavailable("the object's patient key is not in the index")


def _dialect(conn: Connection) -> Any:
    """The insert that speaks ON CONFLICT on this engine (SQLite and PostgreSQL both do)."""
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _insert(conn: Connection, ref: str, fresh: PatientKey) -> PatientKey:
    """Insert ``fresh`` as the key of ``ref`` unless one is there; the key of ``ref`` now."""
    Index.serialize(conn, KEYS_LOCK)
    if conn.scalar(select(retired_keks.c.kek_id).where(retired_keks.c.kek_id == fresh.kek_id)):
        raise _stale(fresh.kek_id)
    row = {
        "subject": fresh.subject,
        "ref": ref,
        "kek_id": fresh.kek_id,
        "wrapped": fresh.sealed,
        "created_at": _now_ms(),
    }
    stmt = _dialect(conn).insert(patient_keys).values(row)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["ref"]))
    # Ours, or the one another node committed first (its insert made ours do nothing).
    subject, kek_id, wrapped = conn.execute(
        select(patient_keys.c.subject, patient_keys.c.kek_id, patient_keys.c.wrapped).where(
            patient_keys.c.ref == ref
        )
    ).one()
    return PatientKey(subject, kek_id, bytes(wrapped))


def _replace(conn: Connection, old_kek_id: str, fresh: list[PatientKey]) -> int:
    Index.serialize(conn, KEYS_LOCK)
    changed = 0
    for record in fresh:
        changed += conn.execute(
            update(patient_keys)
            .where(patient_keys.c.subject == record.subject, patient_keys.c.kek_id == old_kek_id)
            .values(kek_id=record.kek_id, wrapped=record.sealed)
        ).rowcount
    return changed


def _stale(kek_id: str) -> KeyUnavailable:
    return KeyUnavailable(
        f"key-encryption key {kek_id} was retired, yet this node's KEK secret names it current: "
        "give this node the secret the other nodes have"
    )
