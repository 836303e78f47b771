"""Identity: users, API keys (hashed) and per-patient / per-study grants.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "users",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("roles", sa.String(256), nullable=False),
        sa.Column("password_hash", sa.String(256)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_name", sa.String(128), nullable=False),
        sa.Column("label", sa.String(256), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ix_api_keys_user", "api_keys", ["user_name"])
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("subject", "tenant", "patient_id", "study_uid", name="uq_grants"),
    )
    op.create_index("ix_grants_subject", "grants", ["subject", "tenant"])


def downgrade() -> None:
    op.drop_index("ix_grants_subject", "grants")
    op.drop_table("grants")
    op.drop_index("ix_api_keys_user", "api_keys")
    op.drop_table("api_keys")
    op.drop_table("users")
