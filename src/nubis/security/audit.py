"""The tamper-evident audit trail: hash-chained records with signed checkpoints.

Every access to patient data is recorded as a DICOM audit message (PS3.15 A.5; RFC 3881, see
:mod:`nubis.model.audit`) in the ``audit_log`` table of the index. Each record carries the
SHA-256 of the previous record's canonical form, so altering, inserting, reordering or removing
a record breaks the chain at that record; every ``checkpoint_every`` records or
``checkpoint_seconds`` seconds the head of the chain (record count and hash) is signed with an
Ed25519 key kept in the data folder, like a signed tree head of RFC 6962, so removing records
from the end is caught as well. :meth:`AuditTrail.verify` checks both and names the first bad
record.

Recording fails closed: :meth:`AuditTrail.record` returns once the record is committed (with
the index's fsync when ``durable``) and raises :class:`AuditUnavailable` otherwise; the caller
must then refuse the access. Reads (retrievals and queries) are the exception when
``read_flush_ms`` is set: their records are queued and committed in batches off the request
path, within a bounded window, and reads are refused while those commits fail
(:mod:`nubis.security.audit_reads`). It is cheap because it rides on the index's group commit: the
insert is a write job, many requests share one transaction and one fsync, and the chain is
computed inside the writer, so chain order is commit order even across worker processes
(SQLite serializes their write transactions, and the job reads the head inside its own).

What the chain cannot show: someone who holds the signing key and the database can rewrite
everything and re-sign. Keep the public key (``nubis audit key``) and the signed heads away
from the data folder; forwarding the log to a syslog collector (``audit_syslog``) does both.
Records after the last checkpoint are chained but not yet signed: a removed tail shorter than
one checkpoint interval is invisible until the next checkpoint would have covered it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from sqlalchemy import Connection, func, select

from nubis import metrics
from nubis.index.database import AUDIT_LOCK, Index
from nubis.index.driver import driver_cursor
from nubis.index.schema import audit_checkpoints, audit_cursors, audit_log
from nubis.model.audit import (
    ActiveParticipant,
    AuditEvent,
    Code,
    EventOutcome,
    EventType,
    event_from_dict,
)
from nubis.ports.audit import AuditReceipt
from nubis.security import audit_events
from nubis.security.audit_reads import AuditUnavailable, ReadRecordQueue, is_read
from nubis.security.audit_signing import (
    SigningKey,
    load_public_keys,
    public_key_text,
)

log = logging.getLogger(__name__)

GENESIS = "0" * 64  # the "previous hash" of record 1
RECORD_VERSION = 1
_CHECKPOINT_DOMAIN = "nubis audit checkpoint v1"
# PS3.16 has no code for "the audit trail failed verification"; a local code system says so.
INTEGRITY_FAILURE = Code("audit-integrity", "nubis", "Audit Trail Integrity Failure")

_HEAD_SQL = "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
_INSERT_SQL = (
    "INSERT INTO audit_log (seq, at, event_code, outcome, user_id, patient_id, record, "
    "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_LAST_CHECKPOINT_SQL = "SELECT seq FROM audit_checkpoints ORDER BY id DESC LIMIT 1"
_INSERT_CHECKPOINT_SQL = (
    "INSERT INTO audit_checkpoints (seq, head_hash, signed_at, key_id, signature) "
    "VALUES (?, ?, ?, ?, ?) RETURNING id"
)


# --------------------------------------------------------------------------- canonical form
def canonical_record(seq: int, prev_hash: str, event: dict[str, Any]) -> str:
    """The canonical form of a record: sorted, compact JSON of (seq, prev, event, version).

    The record's hash is SHA-256 over these UTF-8 bytes; the next record carries it as
    ``prev``. The text is stored byte for byte, so verification never re-serializes.
    """
    return json.dumps(
        {"event": event, "prev": prev_hash, "seq": seq, "v": RECORD_VERSION},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def record_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _columns(seq: int, event: dict[str, Any]) -> tuple[Any, ...]:
    """The listing columns of a record, derived from its event (verify() checks them)."""
    participants = event["participants"]
    requestor = next((p for p in participants if p.get("requestor")), participants[0])
    patient = next((o["id"] for o in event.get("objects", ()) if o.get("role") == 1), None)
    return (
        seq,
        event["at"],
        event["event_id"]["code"],
        event["outcome"],
        requestor["user_id"],
        patient,
    )


def checkpoint_message(seq: int, head_hash: str, signed_at: int) -> bytes:
    """What a checkpoint signs: domain, record count, head hash, time (ms since the epoch)."""
    return f"{_CHECKPOINT_DOMAIN}\n{seq}\n{head_hash}\n{signed_at}\n".encode()


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class AuditRecord:
    """A stored record: its place in the chain and its event."""

    seq: int
    prev_hash: str
    hash: str
    text: str

    @property
    def event(self) -> AuditEvent:
        return event_from_dict(json.loads(self.text)["event"])

    @property
    def event_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.text)["event"])


@dataclass(frozen=True)
class Checkpoint:
    """A signed head of the chain: ``seq`` records ending in ``head_hash``."""

    id: int
    seq: int
    head_hash: str
    signed_at: int
    key_id: str
    signature: str


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`AuditTrail.verify` found.

    ``first_bad_seq`` is the first record that is missing, altered, out of place or not
    covered as signed; ``problem`` says what is wrong there. ``unsigned`` counts the records
    after the last checkpoint, which only the chain protects so far.
    """

    ok: bool
    records: int
    checkpoints: int
    last_signed_seq: int
    first_bad_seq: int | None = None
    problem: str | None = None

    @property
    def unsigned(self) -> int:
        return max(self.records - self.last_signed_seq, 0)


# --------------------------------------------------------------------------- the trail
# The receipt of a record that was not written because the trail is off.
_UNRECORDED = AuditReceipt(0, "")


class AuditTrail:
    """Hash-chained, periodically signed audit records in the index database.

    Parameters
    ----------
    index
        The archive's index; records are written through its group-commit writer.
    key_path
        The Ed25519 signing key (created 0600 on first open); its ``.pub`` sits beside it.
    source_id
        AuditSourceID (PS3.15 A.5.1) put on events that carry none.
    checkpoint_every
        Sign the head every this many records (0: only by time and at close).
    checkpoint_seconds
        Sign the head when records have waited this long unsigned (0: no timer).
    enabled
        False records nothing (receipts have seq 0): only for measuring what the trail costs,
        and only on loopback (nubis.cli.transport refuses otherwise).
    read_flush_ms
        Commit read records in batches at most this many milliseconds after the read was
        answered (0: every read waits for its own record's commit, like a write).
    read_max_pending
        At most this many read records wait uncommitted; a read beyond waits for a commit.
    """

    def __init__(
        self,
        index: Index,
        *,
        key_path: Path,
        source_id: str,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        enabled: bool = True,
        read_flush_ms: float = 0.0,
        read_max_pending: int = 1000,
    ) -> None:
        self.index = index
        self.enabled = enabled
        self.key_path = key_path
        self.source_id = source_id
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self._key: SigningKey | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._reads = (
            ReadRecordQueue(
                self._commit_events, interval_s=read_flush_ms / 1000, max_records=read_max_pending
            )
            if read_flush_ms > 0 and enabled
            else None
        )

    # ------------------------------------------------------------------ lifecycle
    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = SigningKey.load_or_create(self.key_path)
        return self._key

    def open(self) -> None:
        """Load (or create) the signing key and start the checkpoint timer; index open first.

        A trail that is off writes one record here, Audit Recording Stopped (PS3.15 A.5.3.11),
        so the gap it leaves shows in the chain; then nothing until a process opens it on.
        """
        if not self.enabled:
            stopped = audit_events.security_alert(
                system_participant(self.source_id),
                EventType.AUDIT_RECORDING_STOPPED,
                outcome=EventOutcome.SUCCESS,
                description="audit_trail=false: this process records no access",
                front_door="system",
            )
            self.index.write(self._chain_job([stopped]))
            return
        _ = self.key
        if self._reads is not None:
            self._reads.start()
        if self.checkpoint_seconds > 0 and self._timer is None:
            self._stop.clear()
            self._timer = threading.Thread(
                target=self._checkpoint_loop, name="nubis-audit-checkpoint", daemon=True
            )
            self._timer.start()

    def close(self) -> None:
        """Stop the timer and sign what is unsigned, so a clean stop leaves no unsigned tail."""
        if not self.enabled:
            return
        if self._reads is not None:
            self._reads.close()  # every read answered is in the chain before it is signed
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=10)
            self._timer = None
        try:
            self.checkpoint()
        except Exception:
            log.exception("could not sign the audit chain head at close")

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(self.checkpoint_seconds):
            try:
                self.checkpoint()
            except Exception:
                log.exception("could not sign the audit chain head")

    # ------------------------------------------------------------------ recording
    def record(self, event: AuditEvent) -> AuditReceipt:
        """Durably append ``event`` to the chain; raises :class:`AuditUnavailable` otherwise.

        Returns once the record is committed. The caller must refuse the access when this
        raises (fail closed): an access that cannot be accounted for must not happen.
        """
        return self.record_many([event])[0]

    def record_many(self, events: Sequence[AuditEvent]) -> list[AuditReceipt]:
        """Append ``events`` in order in one commit: all of them, or none and an exception.

        Reads are queued instead when ``read_flush_ms`` is set (their receipts have seq 0):
        they commit within the window, or :class:`AuditUnavailable` is raised now if the
        trail is failing."""
        if not events:
            return []
        if not self.enabled:
            return [_UNRECORDED] * len(events)
        if self._reads is not None and all(is_read(e) for e in events):
            self._reads.add(events)  # serialized by the queue's thread, off the request path
            return [_UNRECORDED] * len(events)
        # Reads answered before this write precede it in the chain (a store's record, which
        # commits inside its own transaction, is the exception: it may precede them).
        self._settle()
        try:
            return self.index.write(self.append_job(events))
        except Exception as exc:
            log.error("audit record could not be written: %s", exc)
            metrics.audit_append_failures.inc(len(events))
            raise AuditUnavailable(
                "the access could not be recorded in the audit trail, so it was refused"
            ) from exc

    def append_job(
        self, events: Sequence[AuditEvent]
    ) -> Callable[[Connection], list[AuditReceipt]]:
        """A write job appending ``events`` in order, for :meth:`Index.write` or to run inside
        another job's transaction (a store commits its record with its row)."""
        if not self.enabled:
            return lambda conn: [_UNRECORDED] * len(events)
        return self._chain_job(events)

    def _chain_job(
        self, events: Sequence[AuditEvent]
    ) -> Callable[[Connection], list[AuditReceipt]]:
        return self._dicts_job(self._dicts(events))

    def _dicts(self, events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
        # Serialize in the caller's thread: only hashing and the insert run in the writer.
        return [
            (e if e.source_id else replace(e, source_id=self.source_id)).to_dict() for e in events
        ]

    def _commit_events(self, events: list[AuditEvent]) -> list[AuditReceipt]:
        return self.index.write(self._chain_job(events))

    def flush_reads(self) -> None:
        """Commit the queued read records now (before reading the chain or stopping)."""
        if self._reads is not None:
            self._reads.flush()

    def is_deferred(self, event: AuditEvent) -> bool:
        return self._reads is not None and is_read(event)

    def _settle(self) -> None:
        """Before the chain is read: commit queued reads, so a record of a read already
        answered is seen (if the trail is failing, what is committed is what there is)."""
        if self._reads is not None:
            with contextlib.suppress(AuditUnavailable):
                self._reads.flush()

    @property
    def reads_pending(self) -> int:
        """Read records answered but not yet committed: what a crash now would lose."""
        return 0 if self._reads is None else self._reads.pending

    def _dicts_job(self, dicts: list[dict[str, Any]]) -> Callable[[Connection], list[AuditReceipt]]:
        key = self.key
        every = self.checkpoint_every

        def job(conn: Connection) -> list[AuditReceipt]:
            cursor = _chain_cursor(conn)
            head = cursor.execute(_HEAD_SQL).fetchone()
            seq, prev = (head[0], head[1]) if head else (0, GENESIS)
            first = seq + 1
            rows, receipts = [], []
            for event in dicts:
                seq += 1
                text = canonical_record(seq, prev, event)
                digest = record_hash(text)
                rows.append((*_columns(seq, event), text, prev, digest))
                receipts.append(AuditReceipt(seq, digest))
                prev = digest
            cursor.executemany(_INSERT_SQL, rows)
            if every and seq // every > (first - 1) // every:
                _sign(cursor, key, seq, prev)
            return receipts

        return job

    def checkpoint(self) -> Checkpoint | None:
        """Sign the current head now, unless it is already signed; returns the checkpoint."""
        key = self.key

        def job(conn: Connection) -> Checkpoint | None:
            cursor = _chain_cursor(conn)
            head = cursor.execute(_HEAD_SQL).fetchone()
            if head is None:
                return None
            last = cursor.execute(_LAST_CHECKPOINT_SQL).fetchone()
            if last is not None and last[0] >= head[0]:
                return None
            return _sign(cursor, key, head[0], head[1])

        return self.index.write(job)

    # ------------------------------------------------------------------ reading
    def head(self) -> tuple[int, str]:
        """(record count, hash of the last record), or (0, GENESIS) when empty."""
        self._settle()
        with self.index.reading() as conn:
            row = conn.execute(
                select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
            ).first()
        return (row[0], row[1]) if row else (0, GENESIS)

    def last_checkpoint(self) -> tuple[Checkpoint | None, int]:
        """The latest signed head and how many there are, without reading them all."""
        self._settle()
        with self.index.reading() as conn:
            row = conn.execute(
                select(audit_checkpoints).order_by(audit_checkpoints.c.id.desc()).limit(1)
            ).first()
            count = conn.execute(select(func.count()).select_from(audit_checkpoints)).scalar()
        return (Checkpoint(*row) if row else None), int(count or 0)

    def checkpoints(self) -> list[Checkpoint]:
        with self.index.reading() as conn:
            rows = conn.execute(select(audit_checkpoints).order_by(audit_checkpoints.c.id)).all()
        return [Checkpoint(*row) for row in rows]

    def scan(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Records after ``after_seq`` in order, *not* audited: for forwarders and verify.

        Forwarding the log to its collector is the audit repository's own transport, not a use
        of the log; recording it would also feed itself forever.
        """
        self._settle()
        with self.index.reading() as conn:
            rows = conn.execute(
                select(audit_log.c.seq, audit_log.c.prev_hash, audit_log.c.hash, audit_log.c.record)
                .where(audit_log.c.seq > after_seq)
                .order_by(audit_log.c.seq)
                .limit(limit)
            ).all()
        return [AuditRecord(*row) for row in rows]

    def read(
        self,
        used_by: Any,
        *,
        front_door: str | None = None,
        request_id: str | None = None,
        after_seq: int = 0,
        limit: int = 100,
        user_id: str | None = None,
        patient_id: str | None = None,
        event_code: str | None = None,
        since: str | None = None,
        until: str | None = None,
        before_seq: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditRecord]:
        """Records matching the filters, in order (``newest_first``: the other way); the read
        itself is recorded first.

        ``used_by`` is who reads (principal-like, see :mod:`nubis.security.audit_events`);
        records lie after ``after_seq`` and before ``before_seq``; ``since``/``until`` are UTC
        times as ``YYYY-MM-DDTHH:MM:SS`` prefixes. The Audit Log Used record (PS3.15 A.5.3.1)
        is written before anything is returned, fail closed.
        """
        self._settle()
        self.record(
            audit_events.audit_log_used(
                used_by, what="read", front_door=front_door, request_id=request_id
            )
        )
        stmt = (
            select(audit_log.c.seq, audit_log.c.prev_hash, audit_log.c.hash, audit_log.c.record)
            .where(audit_log.c.seq > after_seq)
            .order_by(audit_log.c.seq.desc() if newest_first else audit_log.c.seq)
            .limit(limit)
        )
        if before_seq is not None:
            stmt = stmt.where(audit_log.c.seq < before_seq)
        if user_id is not None:
            stmt = stmt.where(audit_log.c.user_id == user_id)
        if patient_id is not None:
            stmt = stmt.where(audit_log.c.patient_id == patient_id)
        if event_code is not None:
            stmt = stmt.where(audit_log.c.event_code == event_code)
        if since is not None:
            stmt = stmt.where(audit_log.c.at >= since)
        if until is not None:
            stmt = stmt.where(audit_log.c.at < until)
        with self.index.reading() as conn:
            return [AuditRecord(*row) for row in conn.execute(stmt).all()]

    # ------------------------------------------------------------------ cursors
    def cursor(self, name: str) -> int:
        """The last record a named exporter delivered (0: none)."""
        with self.index.reading() as conn:
            value = conn.execute(
                select(audit_cursors.c.seq).where(audit_cursors.c.name == name)
            ).scalar()
        return int(value or 0)

    def set_cursor(self, name: str, seq: int) -> None:
        now = time.time_ns() // 1_000_000
        self.index.write(
            lambda conn: driver_cursor(conn).execute(
                "INSERT INTO audit_cursors (name, seq, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, "
                "updated_at = excluded.updated_at",
                (name, seq, now),
            )
        )

    # ------------------------------------------------------------------ verification
    def verify(
        self,
        *,
        public_keys: dict[str, Ed25519PublicKey] | None = None,
        used_by: Any = None,
        front_door: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> VerifyReport:
        """Check the whole chain and every checkpoint; name the first bad record.

        Detects a record altered (its hash or listing columns no longer match), removed (a
        gap in the sequence), inserted or reordered (a record that does not follow its
        predecessor), a tail removed (a checkpoint beyond the end), and a chain rewritten
        after a checkpoint (the head hash at the checkpoint differs) or a forged checkpoint
        (bad signature, unknown key). ``public_keys`` are the trusted keys (default: this
        archive's own key; pass a copy kept elsewhere to defeat a replaced key).
        When ``used_by`` is given the verification is recorded (Audit Log Used) first, and a
        failure is recorded as a Security Alert. ``progress`` is called with the number of
        records read so far, after each batch (it may raise to stop the walk).
        """
        self._settle()
        if used_by is not None:
            self.record(audit_events.audit_log_used(used_by, what="verify", front_door=front_door))
        trusted = public_keys if public_keys is not None else {self.key.key_id: self.key.public}
        checkpoints = self.checkpoints()
        wanted = {c.seq for c in checkpoints}
        hashes: dict[int, str] = {}
        problems: list[tuple[int, str]] = []
        count = 0
        for seq, problem, digest in _walk(self._iter_records(progress=progress)):
            if problem is not None:
                problems.append((seq, problem))
                break
            count = seq
            if seq in wanted:
                hashes[seq] = digest
        end = count if not problems else problems[0][0] - 1
        last_signed = 0
        previous_seq = 0
        for cp in checkpoints:
            issue = _check_checkpoint(cp, trusted, hashes, end, previous_seq)
            if issue is not None:
                problems.append(issue)
                continue
            last_signed = max(last_signed, cp.seq)
            previous_seq = cp.seq
        problems.sort(key=lambda p: p[0])
        report = VerifyReport(
            ok=not problems,
            records=self.head()[0],
            checkpoints=len(checkpoints),
            last_signed_seq=last_signed,
            first_bad_seq=problems[0][0] if problems else None,
            problem=problems[0][1] if problems else None,
        )
        if used_by is not None and not report.ok:
            self.record(
                audit_events.security_alert(
                    used_by,
                    INTEGRITY_FAILURE,
                    outcome=EventOutcome.SERIOUS_FAILURE,
                    description=f"audit trail verification failed: {report.problem}",
                    front_door=front_door,
                )
            )
        return report

    def _iter_records(
        self, batch: int = 5000, progress: Callable[[int], None] | None = None
    ) -> Iterator[tuple[Any, ...]]:
        columns = (
            audit_log.c.at,
            audit_log.c.event_code,
            audit_log.c.outcome,
            audit_log.c.user_id,
            audit_log.c.patient_id,
            audit_log.c.record,
            audit_log.c.prev_hash,
            audit_log.c.hash,
        )
        for rows in self.index.walk(audit_log.c.seq, columns, page=batch):
            yield from (tuple(r) for r in rows)
            if progress is not None:
                progress(rows[-1][0])


def _walk(rows: Iterator[tuple[Any, ...]]) -> Iterator[tuple[int, str | None, str]]:
    """Yield (seq, problem or None, hash) for each stored row in order, stopping at a problem."""
    expected, prev = 1, GENESIS
    for row in rows:
        seq, text, prev_col, hash_col = row[0], row[6], row[7], row[8]
        if seq != expected:
            yield (
                expected,
                (
                    f"record {expected} is missing (the log goes from record {expected - 1} to "
                    f"record {seq}): removed"
                ),
                "",
            )
            return
        try:
            content = json.loads(text)
        except ValueError:
            yield seq, f"record {seq} is not a valid record: altered", ""
            return
        digest = record_hash(text)
        if digest != hash_col:
            yield seq, f"record {seq} was altered: its content does not match its hash", ""
            return
        if content.get("seq") != seq:
            yield (
                seq,
                (
                    f"record {seq} holds the record numbered {content.get('seq')}: records were "
                    "inserted, removed or reordered here"
                ),
                "",
            )
            return
        if content.get("prev") != prev or prev_col != prev:
            yield (
                seq,
                (
                    f"record {seq} does not follow record {seq - 1} (previous-hash mismatch): a "
                    "record was inserted, reordered or replaced here"
                ),
                "",
            )
            return
        try:
            columns = _columns(seq, content["event"])
        except (KeyError, IndexError, TypeError):
            yield seq, f"record {seq} has no valid event: altered", ""
            return
        if tuple(row[:6]) != columns:
            yield seq, f"record {seq} was altered: its listing columns differ from its content", ""
            return
        yield seq, None, digest
        prev = digest
        expected += 1


def _check_checkpoint(
    cp: Checkpoint,
    trusted: dict[str, Ed25519PublicKey],
    hashes: dict[int, str],
    end: int,
    previous_seq: int,
) -> tuple[int, str] | None:
    public = trusted.get(cp.key_id)
    if public is None:
        return cp.seq, f"checkpoint {cp.id} (record {cp.seq}) is signed by an unknown key"
    try:
        public.verify(
            base64.b64decode(cp.signature), checkpoint_message(cp.seq, cp.head_hash, cp.signed_at)
        )
    except (InvalidSignature, ValueError):
        return cp.seq, f"checkpoint {cp.id} (record {cp.seq}) has a bad signature: forged"
    if cp.seq < previous_seq:
        return cp.seq, f"checkpoint {cp.id} goes back to record {cp.seq}: checkpoints reordered"
    if cp.seq > end:
        return end + 1, (
            f"the log ends at record {end} but checkpoint {cp.id} signed {cp.seq} records: "
            f"records {end + 1} to {cp.seq} were removed or broken"
        )
    if hashes.get(cp.seq) != cp.head_hash:
        return previous_seq + 1, (
            f"the chain at record {cp.seq} differs from signed checkpoint {cp.id}: records "
            f"{previous_seq + 1} to {cp.seq} were rewritten"
        )
    return None


def _sign(cursor: Any, key: SigningKey, seq: int, head_hash: str) -> Checkpoint:
    signed_at = time.time_ns() // 1_000_000
    signature = base64.b64encode(
        key.private.sign(checkpoint_message(seq, head_hash, signed_at))
    ).decode()
    row = cursor.execute(
        _INSERT_CHECKPOINT_SQL, (seq, head_hash, signed_at, key.key_id, signature)
    ).fetchone()
    return Checkpoint(row[0], seq, head_hash, signed_at, key.key_id, signature)


def _chain_cursor(conn: Connection) -> Any:
    """The driver's cursor (the append is a hot path), with the chain's head held until commit.

    On PostgreSQL several nodes append at once: without the lock two of them would read the
    same head and one would fail on its sequence number. The chain is one sequence by design,
    so appends take turns; each holds the lock for one short transaction.
    """
    Index.serialize(conn, AUDIT_LOCK)
    return driver_cursor(conn)


def system_participant(source_id: str) -> ActiveParticipant:
    """The archive itself as the acting participant (start, stop, background jobs)."""
    return ActiveParticipant(
        user_id=source_id, requestor=True, alternative_user_id=str(os.getpid())
    )


__all__ = [
    "GENESIS",
    "AuditEvent",
    "AuditReceipt",
    "AuditRecord",
    "AuditTrail",
    "AuditUnavailable",
    "Checkpoint",
    "SigningKey",
    "VerifyReport",
    "canonical_record",
    "checkpoint_message",
    "load_public_keys",
    "public_key_text",
]
