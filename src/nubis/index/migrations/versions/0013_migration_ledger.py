"""What migrations from legacy archives listed and did: migration_studies, migration_instances.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "migration_studies",
        sa.Column("migration", sa.String(64), primary_key=True),
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("study_date", sa.String(8)),
        sa.Column("source_count", sa.Integer),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("job_id", sa.Integer),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "migration_instances",
        sa.Column("migration", sa.String(64), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), primary_key=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64)),
        sa.Column("source_sha256", sa.String(64)),
        sa.Column("size", sa.BigInteger),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer),
        sa.Column("reason", sa.String(512)),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_migration_instances_study", "migration_instances", ["migration", "study_uid"]
    )


def downgrade() -> None:
    op.drop_index("ix_migration_instances_study", "migration_instances")
    op.drop_table("migration_instances")
    op.drop_table("migration_studies")
