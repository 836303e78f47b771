"""Worklists (UPS-RS, issue 15): workitems and the subscriptions of AEs to their events.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "workitems",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("workitem_uid", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("transaction_uid", sa.String(64)),
        sa.Column("performer", sa.String(256)),
        sa.Column("priority", sa.String(8)),
        sa.Column("worklist_label", sa.String(64)),
        sa.Column("input_readiness", sa.String(16)),
        sa.Column("scheduled_start", sa.String(14)),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("patient_name_folded", sa.String(324)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("workitem_code_value", sa.String(64)),
        sa.Column("workitem_code_scheme", sa.String(64)),
        sa.Column("station_code_value", sa.String(64)),
        sa.Column("station_code_scheme", sa.String(64)),
        sa.Column("attrs", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("partition", "workitem_uid", name="uq_workitems_uid"),
    )
    op.create_index(
        "ix_workitems_state_start", "workitems", ["partition", "state", "scheduled_start"]
    )
    op.create_index("ix_workitems_patient", "workitems", ["partition", "patient_id"])
    op.create_table(
        "workitem_subscriptions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("ae_title", sa.String(16), nullable=False),
        sa.Column("target_uid", sa.String(64), nullable=False),
        sa.Column("deletion_lock", sa.Boolean, nullable=False),
        sa.Column("filter", sa.Text),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint(
            "partition", "ae_title", "target_uid", name="uq_workitem_subscriptions"
        ),
    )
    op.create_index(
        "ix_workitem_subscriptions_target",
        "workitem_subscriptions",
        ["partition", "target_uid"],
    )


def downgrade() -> None:
    op.drop_index("ix_workitem_subscriptions_target", "workitem_subscriptions")
    op.drop_table("workitem_subscriptions")
    op.drop_index("ix_workitems_patient", "workitems")
    op.drop_index("ix_workitems_state_start", "workitems")
    op.drop_table("workitems")
