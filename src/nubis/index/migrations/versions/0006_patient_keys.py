"""Patient keys in the index (the index keyring): patient_keys, erased_patient_keys, retired_keks.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # tables when schema.py moves on.
    op.create_table(
        "patient_keys",
        sa.Column("subject", sa.String(64), primary_key=True),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        # Two nodes making the same patient's first key at once end with one: the loser's
        # insert does nothing and it reads the winner's key.
        sa.UniqueConstraint("ref", name="uq_patient_keys_ref"),
    )
    op.create_index("ix_patient_keys_kek", "patient_keys", ["kek_id"])
    op.create_table(
        "erased_patient_keys",
        sa.Column("subject", sa.String(64), primary_key=True),
        sa.Column("erased_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "retired_keks",
        sa.Column("kek_id", sa.String(32), primary_key=True),
        sa.Column("retired_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("retired_keks")
    op.drop_table("erased_patient_keys")
    op.drop_index("ix_patient_keys_kek", "patient_keys")
    op.drop_table("patient_keys")
