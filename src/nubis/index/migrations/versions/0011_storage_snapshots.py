"""Daily storage snapshots per tier, for the admin pages' charts: storage_snapshots.

Revision ID: 0011
Revises: 0010 (issue 10 numbers the share links' migration 0010; whichever merges second
revises the other)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on.
    op.create_table(
        "storage_snapshots",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("tier", sa.String(32), primary_key=True),
        sa.Column("objects", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("taken_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("storage_snapshots")
