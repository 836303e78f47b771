"""What an object was when it arrived, for tiers that compress losslessly: instance_originals.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on.
    op.create_table(
        "instance_originals",
        sa.Column(
            "instance_pk",
            sa.Integer,
            sa.ForeignKey("instances.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("compressed", sa.Boolean, nullable=False),
        sa.Column("note", sa.String(256)),
        sa.Column("at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("instance_originals")
