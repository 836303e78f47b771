"""What was odd about objects ingested all the same, and studies held in quarantine because
their instances disagree on the patient: instance_warnings, quarantined_studies (issue 12).

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on.
    op.create_table(
        "instance_warnings",
        sa.Column(
            "instance_pk",
            sa.Integer,
            sa.ForeignKey("instances.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("reason", sa.String(48), primary_key=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("detail", sa.String(256), nullable=False),
        sa.Column("at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "quarantined_studies",
        sa.Column(
            "study_pk",
            sa.Integer,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("since", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantined_studies")
    op.drop_table("instance_warnings")
