"""Corrections of patient and study attributes, kept as an overlay: study_overlays, corrections.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "study_overlays",
        sa.Column(
            "study_pk",
            sa.Integer,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("attrs", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("stored_patient_id", sa.String(64)),
        sa.Column("correction_id", sa.Integer, nullable=False),
    )
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("undoes", sa.Integer),
        sa.Column("undone_by", sa.Integer),
        sa.Column("study_uids", sa.Text, nullable=False),
        sa.Column("changes", sa.Text, nullable=False),
    )
    op.create_index("ix_corrections_partition", "corrections", ["partition", "id"])


def downgrade() -> None:
    op.drop_index("ix_corrections_partition", table_name="corrections")
    op.drop_table("corrections")
    op.drop_table("study_overlays")
