"""The change feed and webhook subscriptions (issue 15): every change in commit order, and
who is told of it.

Revision ID: 0022
Revises: 0021
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "change_feed",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("detail", sa.String(64)),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("modality", sa.String(16)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_change_feed_partition", "change_feed", ["partition", "seq"])
    op.create_index("ix_change_feed_created", "change_feed", ["created_at"])
    op.create_table(
        "change_feed_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("expired_through", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO change_feed_state (id, expired_through) VALUES (1, 0)")
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("actions", sa.String(64), nullable=False),
        sa.Column("modalities", sa.String(256), nullable=False),
        sa.Column("match", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("cursor", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered", sa.BigInteger, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", sa.BigInteger),
    )
    op.create_table(
        "webhook_dead_letters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "subscription_id",
            sa.Integer,
            sa.ForeignKey("webhook_subscriptions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("failed_at", sa.BigInteger, nullable=False),
        sa.Column("replay", sa.Integer, nullable=False),
        sa.UniqueConstraint("subscription_id", "seq", name="uq_webhook_dead_letters"),
    )


def downgrade() -> None:
    op.drop_table("webhook_dead_letters")
    op.drop_table("webhook_subscriptions")
    op.drop_table("change_feed_state")
    op.drop_index("ix_change_feed_created", "change_feed")
    op.drop_index("ix_change_feed_partition", "change_feed")
    op.drop_table("change_feed")
