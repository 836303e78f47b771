"""Research projects (issue 14): cohorts, members, wrapped project keys and the encrypted
re-identification table.

Revision ID: 0024
Revises: 0023
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "research_projects",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("profile_toml", sa.Text, nullable=False),
        sa.Column("cohort_query", sa.Text),
        sa.Column("key_subject", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(255), nullable=False),
        sa.Column("key_wrapped_subject", sa.String(255), nullable=False),
        sa.Column("key_ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_research_projects_name"),
    )
    op.create_table(
        "research_members",
        sa.Column(
            "project_id", sa.Integer, sa.ForeignKey("research_projects.id"), primary_key=True
        ),
        sa.Column("user_id", sa.String(256), primary_key=True),
    )
    op.create_table(
        "research_studies",
        sa.Column(
            "project_id", sa.Integer, sa.ForeignKey("research_projects.id"), primary_key=True
        ),
        sa.Column("study_uid", sa.String(64), primary_key=True),
    )
    op.create_table(
        "research_reid",
        sa.Column(
            "project_id", sa.Integer, sa.ForeignKey("research_projects.id"), primary_key=True
        ),
        sa.Column("lookup", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("research_reid")
    op.drop_table("research_studies")
    op.drop_table("research_members")
    op.drop_table("research_projects")
