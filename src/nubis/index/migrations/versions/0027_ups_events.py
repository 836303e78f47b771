"""UPS event reports waiting for their subscriber's event channel (issue 15).

Revision ID: 0027
Revises: 0026
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workitem_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("workitem_uid", sa.String(64), nullable=False),
        sa.Column("report", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_workitem_events_ae", "workitem_events", ["partition", "ae_title", "id"])


def downgrade() -> None:
    op.drop_index("ix_workitem_events_ae", table_name="workitem_events")
    op.drop_table("workitem_events")
