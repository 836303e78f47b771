"""The ``webhooks`` job: each subscription is sent, in order, the change-feed entries it may see.

A run goes through the subscriptions, each under its lease (one run per subscription across
every node). It reads the feed as the subscription's principal through ChangeFeedService, so
scope (tenant, grants, quarantine) and audit are the feed's own, applies the filters, and POSTs
the wanted entries in feed order, up to ``batch`` per request (a JSON array), signed
(nubis.events.signing). The cursor moves past a batch once the receiver took it (2xx): at
least once, in feed order. A failed attempt is retried after 1, 2, 4... seconds up to
``retry_max_seconds``; after ``max_attempts`` the batch's entries become dead letters and the
next batch is sent, so one bad entry does not hold a subscription for good. Dead letters
marked for replay are sent once more, together, at the start of the next run.

Nothing here runs on a request's path: a slow receiver delays its own subscription's run, by
the sink's timeout at most per attempt, and never a store.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from nubis.crypto.webhook_secrets import SecretBox
from nubis.errors import NubisError
from nubis.events.signing import HEADER, sign
from nubis.events.sink import WebhookSink
from nubis.index import feed_sql
from nubis.index import webhooks_sql as sql
from nubis.index.database import Index
from nubis.index.feed_sql import Entry
from nubis.index.webhooks_sql import Subscription
from nubis.jobs.context import JobContext
from nubis.jobs.store import JobStore
from nubis.security.policy import Principal
from nubis.services.changefeed import ChangeFeedService, entry_json
from nubis.services.query import QueryService
from nubis.services.webhooks import match_query, subscriber

__all__ = ["KIND", "WebhookDelivery"]

log = logging.getLogger(__name__)

KIND = "webhooks"
_LEASE_SECONDS = 60.0
# Entries read per page of the feed, and sent at most per request (webhook_batch).
_PAGE = 500
_KEEP_RUNS_MS = 3600_000


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class WebhookDelivery:
    def __init__(
        self,
        index: Index,
        feed: ChangeFeedService,
        query: QueryService,
        secrets: SecretBox,
        sink: WebhookSink,
        *,
        jobs: JobStore | None = None,
        batch: int = 100,
        max_attempts: int = 8,
        retry_max_seconds: float = 300,
        retry_base_seconds: float = 1.0,
    ) -> None:
        self.index = index
        self.feed = feed
        self.query = query
        self.secrets = secrets
        self.sink = sink
        self.jobs = jobs
        self.batch = batch
        self.max_attempts = max_attempts
        self.retry_max_seconds = retry_max_seconds
        self.retry_base_seconds = retry_base_seconds
        self._next_prune = 0.0

    def run(self, ctx: JobContext) -> dict[str, Any]:
        """The job's handler: one pass over every subscription."""
        owner = f"{socket.gethostname()}:{os.getpid()}:{ctx.job.id}"
        counts: Counter[str] = Counter()
        with self.index.reading() as conn:
            subscriptions = sql.listed(conn)
            due = {sub.id for sub in subscriptions if _due(conn, sub)}
        for listed in subscriptions:
            ctx.check()
            if listed.id not in due:
                continue  # nothing new, or backing off: no write at all
            if not self._lease(listed.id, owner):
                counts["busy"] += 1
                continue
            try:
                # Read again under the lease: another run may have moved it on since.
                with self.index.reading() as conn:
                    sub = sql.by_name(conn, listed.name)
                if sub is not None:
                    self._drain(sub, owner, ctx, counts)
            finally:
                self._write(sql.release_lease, listed.id, owner)
        if self.jobs is not None and time.monotonic() >= self._next_prune:
            # A run every few seconds: keep the last hour's for `nubis jobs list`, not all.
            self._next_prune = time.monotonic() + 600
            self.jobs.prune(_now_ms() - _KEEP_RUNS_MS, kind=KIND)
        return dict(sorted(counts.items()))

    # ------------------------------------------------------------------ one subscription
    def _lease(self, sub_id: int, owner: str) -> bool:
        """Take or renew the subscription's lease (renewed each page of a long catch-up)."""
        return bool(
            self.index.write(
                lambda conn: sql.take_lease(conn, sub_id, owner, _now_ms(), _LEASE_SECONDS)
            )
        )

    def _drain(self, sub: Subscription, owner: str, ctx: JobContext, counts: Counter[str]) -> None:
        who = subscriber(sub)
        secret = self.secrets.open(sub.name, sub.secret)
        self._replay(sub, who, secret, counts)
        if sub.next_attempt_at > _now_ms():
            return  # backing off after a failed attempt
        cursor, attempts = sub.cursor, sub.attempts
        while True:
            with self.index.reading() as conn:
                if not sql.entries_after(conn, sub.tenant, cursor):
                    return
            try:
                entries = self.feed.page(who, cursor, _PAGE)
            except NubisError as exc:
                # Refused (a role that may not read), or the cursor expired: the admin sees
                # why in `nubis webhooks list`.
                self._write(sql.failed, sub.id, f"reading the change feed: {exc.reason}", 0)
                counts["refused"] += 1
                return
            wanted = [e for e in entries if self._wanted(sub, who, e)]
            counts["skipped"] += len(entries) - len(wanted)
            for batch in _batches(wanted, self.batch):
                ctx.check()
                reason = self._send(sub, secret, batch)
                if reason is None:
                    counts["delivered"] += len(batch)
                    self._write(sql.advance, sub.id, batch[-1].seq, len(batch))
                    cursor, attempts = batch[-1].seq, 0
                    continue
                attempts += 1
                counts["failed_attempts"] += 1
                # Entries skipped before this batch are done with; the batch waits its turn.
                skipped_to = max([cursor, *(e.seq for e in entries if e.seq < batch[0].seq)])
                self._write(sql.advance, sub.id, skipped_to, 0)
                if attempts < self.max_attempts:
                    retry_at = _now_ms() + int(1000 * self._backoff(attempts))
                    self._write(sql.failed, sub.id, reason, retry_at)
                    return
                log.warning(
                    "webhook %s: entries %d-%d given up after %d attempts: %s",
                    sub.name,
                    batch[0].seq,
                    batch[-1].seq,
                    attempts,
                    reason,
                )
                seqs = [e.seq for e in batch]
                self._write(sql.dead_letter, sub.id, seqs, attempts, reason, _now_ms())
                cursor, attempts = batch[-1].seq, 0
                counts["dead_letters"] += len(batch)
            if entries and entries[-1].seq > cursor:
                # Past the page's last entries, which the filters skipped.
                self._write(sql.advance, sub.id, entries[-1].seq, 0)
                cursor = entries[-1].seq
            if len(entries) < _PAGE:
                return
            if not self._lease(sub.id, owner):  # renewed for the next page of a catch-up
                counts["lease_lost"] += 1
                return

    def _write(self, change: Callable[..., object], *args: Any) -> None:
        self.index.write(lambda conn: change(conn, *args))

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_max_seconds, self.retry_base_seconds * 2 ** (attempts - 1)))

    def _replay(self, sub: Subscription, who: Principal, secret: str, counts: Counter[str]) -> None:
        with self.index.reading() as conn:
            due = sql.due_replays(conn, sub.id, self.batch)
        found: list[Entry] = []
        for seq in due:
            page = self.feed.page(who, seq - 1, 1) if seq > 0 else []
            if page and page[0].seq == seq:
                found.append(page[0])
            else:
                # Expired, or out of the subscription's scope now: nothing left to send.
                gone = "the entry is no longer in the feed (expired, or out of scope now)"
                self._write(sql.replay_failed, sub.id, [seq], gone, _now_ms())
        if not found:
            return
        seqs = [e.seq for e in found]
        reason = self._send(sub, secret, found)
        if reason is None:
            self._write(sql.forget_dead_letters, sub.id, seqs)
            counts["replayed"] += len(found)
        else:
            self._write(sql.replay_failed, sub.id, seqs, reason, _now_ms())
            counts["replay_failed"] += len(found)

    def _wanted(self, sub: Subscription, who: Principal, entry: Entry) -> bool:
        actions = [a for a in sub.actions.split(",") if a]
        if actions and entry.action not in actions:
            return False
        modalities = {m for m in sub.modalities.split(",") if m}
        if modalities:
            if entry.modality is not None:
                present: set[str] | None = {entry.modality}
            else:
                with self.index.reading() as conn:
                    present = feed_sql.study_modalities(conn, entry.partition, entry.study_uid)
            if not present or not present & modalities:
                return False
        if sub.match:
            # The study as it stands now, seen by the subscription's principal (scoped and
            # recorded as its query): a study deleted since matches nothing.
            query = match_query(sub.match, entry.study_uid, entry.partition)
            page = self.query.search(who, query, text=sub.match)
            if not page.items:
                return False
        return True

    def _send(self, sub: Subscription, secret: str, batch: list[Entry]) -> str | None:
        body = json.dumps([entry_json(e) for e in batch], separators=(",", ":")).encode()
        headers = {
            HEADER: sign(secret, body),
            "Nubis-Webhook": sub.name,
            "Nubis-Delivery": f"{sub.name}:{batch[0].seq}-{batch[-1].seq}",
            "User-Agent": "nubis-webhooks",
        }
        return self.sink.post(sub.url, body, headers)


def _due(conn: Connection, sub: Subscription) -> bool:
    """Whether a run has anything to do for ``sub``: dead letters to replay, or entries after
    its cursor once its backoff is over (reads only: an idle run writes nothing)."""
    if sql.due_replays(conn, sub.id, 1):
        return True
    return sub.next_attempt_at <= _now_ms() and sql.entries_after(conn, sub.tenant, sub.cursor)


def _batches(entries: list[Entry], size: int) -> list[list[Entry]]:
    return [entries[i : i + size] for i in range(0, len(entries), size)]
