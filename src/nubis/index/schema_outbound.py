"""Index tables of what leaves the archive: the replication outbox (and its state), an edge
node's confirmed and evicted copies, the change feed (and its expiry state), webhook
subscriptions and their dead letters.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from nubis.index.schema_base import UID, metadata

__all__ = [
    "change_feed",
    "change_feed_state",
    "edge_copies",
    "replication_outbox",
    "replication_state",
    "webhook_dead_letters",
    "webhook_subscriptions",
]

# Replication to another nubis (nubis.replication, docs/replication.md). Each change to a study
# of the replicated tenant (a store, a delete) adds a row in the transaction that makes it, so
# a change committed is a change queued, whatever crashes after. ``seq`` is the order of
# commits within a study (the study's row lock is held when the row is written); the
# ``replicate`` job applies a study's rows in that order and deletes each once the replica
# holds it. ``due_at`` is when a row may be applied (a delete held back
# replicate_delete_delay_days); ``attempts``/``next_attempt_at`` its backoff, ``parked`` set
# once the replica refused it too often (an operator retries it).
replication_outbox = Table(
    "replication_outbox",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("op", String(8), nullable=False),  # store, delete, correct, shred, tier
    Column("partition", String(64), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("series_uid", UID),
    Column("sop_instance_uid", UID),
    Column("created_at", BigInteger, nullable=False),
    Column("due_at", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("parked", Integer, nullable=False),
    Column("last_error", Text),
    # JSON: a correction's attributes, the shredded patient, the tier (0019).
    Column("detail", Text),
    sqlite_autoincrement=True,
)
Index(
    "ix_replication_outbox_study",
    replication_outbox.c.partition,
    replication_outbox.c.study_uid,
    replication_outbox.c.seq,
)
Index("ix_replication_outbox_due", replication_outbox.c.due_at)

# One row (id 1): the last entry the replica confirmed (its seq and when), the last error, and
# the drain lease that lets one ``replicate`` job at a time apply entries; and when a
# read-only replica (replica_of) was promoted to a primary, by whom.
replication_state = Table(
    "replication_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("verified_seq", BigInteger),
    Column("verified_at", BigInteger),
    Column("last_error", Text),
    Column("last_error_at", BigInteger),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", BigInteger),
    Column("promoted_at", BigInteger),
    Column("promoted_by", String(128)),
)

# An edge node's record of each instance the cloud archive confirmed (docs/edge.md, migration 0025):
# ``confirmed_sha256`` is the digest the cloud verified when the replicate job retired the
# instance's store entry (evictable only while it is still the instance's), and
# ``evicted_at`` when the edge removed its local blob (reads then go to the cloud). Deleted
# with the instance.
edge_copies = Table(
    "edge_copies",
    metadata,
    Column(
        "instance_pk",
        Integer,
        ForeignKey("instances.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("confirmed_sha256", String(64), nullable=False),
    Column("confirmed_at", BigInteger, nullable=False),
    Column("evicted_at", BigInteger),
)

# The change feed (issue 15, migration 0022): every create, update (a correction, a tier move),
# delete and key shredding, written by the index in the change's own commit
# (nubis.index.feed_sql). ``seq`` is commit order on both engines (feed_sql says how), so a
# client paging by it never misses or repeats an entry. Never reused (autoincrement on SQLite).
change_feed = Table(
    "change_feed",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("action", String(8), nullable=False),  # create, update, delete, shred
    Column("state", String(10), nullable=False),  # current, deleted, shredded
    Column("detail", String(64)),  # replaced, correction:<id>, tier:<name>, quarantined
    Column("partition", String(64), nullable=False),
    Column("study_uid", UID, nullable=False),
    Column("series_uid", UID),
    Column("sop_instance_uid", UID),
    Column("modality", String(16)),
    Column("created_at", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)
Index("ix_change_feed_partition", change_feed.c.partition, change_feed.c.seq)
Index("ix_change_feed_created", change_feed.c.created_at)

# One row (id 1): the highest seq the retention expiry removed, so a cursor older than that is
# told it missed entries (410) rather than silently skipping them.
change_feed_state = Table(
    "change_feed_state",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("expired_through", BigInteger, nullable=False),
)

# Webhook subscriptions (nubis.events): each acts as a principal (``webhook:<name>``, its role
# in its tenant) and is delivered the feed entries that principal may see, from ``cursor`` on.
# The secret is AES-GCM encrypted (nubis.events.secrets); the delivery state is the head entry's.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("url", Text, nullable=False),
    Column("secret", Text, nullable=False),
    Column("tenant", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("actions", String(64), nullable=False),  # comma-separated; empty: all
    Column("modalities", String(256), nullable=False),  # comma-separated; empty: all
    Column("match", Text, nullable=False),  # a QIDO-RS study query string; empty: all
    Column("created_by", String(256), nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("cursor", BigInteger, nullable=False),  # the last entry delivered or given up
    Column("attempts", Integer, nullable=False),  # failed attempts at the next entry
    Column("next_attempt_at", BigInteger, nullable=False),
    Column("last_error", Text),
    Column("delivered", BigInteger, nullable=False),
    Column("lease_owner", String(128)),
    Column("lease_expires_at", BigInteger),
)

# Entries a subscription's receiver did not take after webhook_max_attempts: kept until
# replayed (``replay`` set: the next delivery run tries it once more) or the subscription goes.
webhook_dead_letters = Table(
    "webhook_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "subscription_id",
        Integer,
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("seq", BigInteger, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("failed_at", BigInteger, nullable=False),
    Column("replay", Integer, nullable=False),
    UniqueConstraint("subscription_id", "seq", name="uq_webhook_dead_letters"),
)
