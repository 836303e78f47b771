"""Corrections, shreds and tier changes in the replication outbox, and promotion (issue 13).

``replication_outbox.detail`` carries what an entry needs beyond its UIDs (a correction's
attributes, the shredded patient, the tier); ``replication_state.promoted_at``/``promoted_by``
record when a read-only replica became a primary (``nubis replication promote``).

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("replication_outbox") as batch:
        batch.add_column(sa.Column("detail", sa.Text))
    with op.batch_alter_table("replication_state") as batch:
        batch.add_column(sa.Column("promoted_at", sa.BigInteger))
        batch.add_column(sa.Column("promoted_by", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("replication_state") as batch:
        batch.drop_column("promoted_by")
        batch.drop_column("promoted_at")
    with op.batch_alter_table("replication_outbox") as batch:
        batch.drop_column("detail")
