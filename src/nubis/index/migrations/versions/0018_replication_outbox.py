"""The replication outbox and its state (issue 13): changes awaiting the replica, in commit order.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "replication_outbox",
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("sop_instance_uid", sa.String(64)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("due_at", sa.BigInteger, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger, nullable=False),
        sa.Column("parked", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        # Never reuse a seq (SQLite would, after the highest row is deleted): the last
        # verified point names one entry for good.
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_replication_outbox_study", "replication_outbox", ["partition", "study_uid", "seq"]
    )
    op.create_index("ix_replication_outbox_due", "replication_outbox", ["due_at"])
    op.create_table(
        "replication_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("verified_seq", sa.BigInteger),
        sa.Column("verified_at", sa.BigInteger),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", sa.BigInteger),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", sa.BigInteger),
    )
    op.execute("INSERT INTO replication_state (id) VALUES (1)")


def downgrade() -> None:
    op.drop_table("replication_state")
    op.drop_index("ix_replication_outbox_due", "replication_outbox")
    op.drop_index("ix_replication_outbox_study", "replication_outbox")
    op.drop_table("replication_outbox")
