"""An edge node's confirmed and evicted copies (issue 13, docs/edge.md).

``edge_copies`` holds, per instance, the SHA-256 the cloud archive verified when the outbox
entry of its store was retired, and when the edge evicted its local blob.

Revision ID: 0025
Revises: 0024
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on.
    op.create_table(
        "edge_copies",
        sa.Column(
            "instance_pk",
            sa.Integer,
            sa.ForeignKey("instances.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("confirmed_sha256", sa.String(64), nullable=False),
        sa.Column("confirmed_at", sa.BigInteger, nullable=False),
        sa.Column("evicted_at", sa.BigInteger),
    )


def downgrade() -> None:
    op.drop_table("edge_copies")
