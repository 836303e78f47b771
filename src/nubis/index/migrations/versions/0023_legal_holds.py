"""Retention (issue 13): legal holds and erasure certificates.

Revision ID: 0023
Revises: 0022
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "legal_holds",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("study_uid", sa.String(64)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("placed_by", sa.String(256), nullable=False),
        sa.Column("placed_at", sa.BigInteger, nullable=False),
        sa.Column("released_by", sa.String(256)),
        sa.Column("released_at", sa.BigInteger),
        sa.Column("release_reason", sa.Text),
    )
    op.create_index("ix_legal_holds_target", "legal_holds", ["partition", "released_at"])
    op.create_table(
        "erasure_certificates",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("partition", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("issued_at", sa.BigInteger, nullable=False),
        sa.Column("cause", sa.String(256), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("audit_seq", sa.Integer, nullable=False),
        sa.Column("patient_id", sa.String(64)),
    )
    op.create_index(
        "ix_erasure_certificates_study", "erasure_certificates", ["partition", "study_uid"]
    )


def downgrade() -> None:
    op.drop_index("ix_erasure_certificates_study", "erasure_certificates")
    op.drop_table("erasure_certificates")
    op.drop_index("ix_legal_holds_target", "legal_holds")
    op.drop_table("legal_holds")
