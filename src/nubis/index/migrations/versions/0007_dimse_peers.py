"""The DIMSE peer table in the index, shared by every node: dimse_peers.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on.
    op.create_table(
        "dimse_peers",
        sa.Column("ae_title", sa.String(16), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("may_store", sa.Boolean, nullable=False),
        sa.Column("may_query", sa.Boolean, nullable=False),
        sa.Column("may_retrieve", sa.Boolean, nullable=False),
        sa.Column("tls_subject", sa.String(1024), nullable=False),
        sa.Column("tls_fingerprint", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dimse_peers")
