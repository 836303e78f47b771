"""Analyzer runs (issue 15): which studies each analyzer version was queued for, and the outcome.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on.
    op.create_table(
        "analyzer_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "study_pk", sa.Integer, sa.ForeignKey("studies.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("analyzer", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.Integer),
        sa.Column("queued_at", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.BigInteger),
        sa.Column("finished_at", sa.BigInteger),
        sa.Column("slot_expires_at", sa.BigInteger),
        sa.Column("summary", sa.Text),
        sa.Column("last_error", sa.Text),
        sa.UniqueConstraint("analyzer", "version", "study_pk", name="uq_analyzer_runs_study"),
    )
    op.create_index("ix_analyzer_runs_state", "analyzer_runs", ["analyzer", "state"])


def downgrade() -> None:
    op.drop_index("ix_analyzer_runs_state", "analyzer_runs")
    op.drop_table("analyzer_runs")
