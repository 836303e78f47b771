"""Background jobs, and what storage tiers need: last reads and pins per study, tier per instance.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("unique_key", sa.String(128)),
        sa.Column("progress_done", sa.BigInteger, nullable=False),
        sa.Column("progress_total", sa.BigInteger),
        sa.Column("cursor_json", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", sa.BigInteger),
        sa.Column("cancel_requested", sa.Integer, nullable=False),
        sa.Column("not_before", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(256)),
        sa.Column("started_at", sa.BigInteger),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("last_error", sa.Text),
        sa.Column("result", sa.Text),
        sa.UniqueConstraint("unique_key", name="uq_jobs_unique_key"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state", "not_before"])
    op.create_table(
        "study_lifecycle",
        sa.Column(
            "study_pk",
            sa.Integer,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("last_read_at", sa.BigInteger),
        sa.Column("tier_pin", sa.String(32)),
        sa.Column("tier_pin_until", sa.BigInteger),
    )
    op.create_table(
        "instance_tiers",
        sa.Column(
            "instance_pk",
            sa.Integer,
            sa.ForeignKey("instances.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("tier", sa.String(32), nullable=False),
        sa.Column("moved_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("instance_tiers")
    op.drop_table("study_lifecycle")
    op.drop_index("ix_jobs_state", "jobs")
    op.drop_table("jobs")
