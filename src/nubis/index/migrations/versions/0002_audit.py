"""Audit trail: hash-chained audit_log, signed audit_checkpoints, export audit_cursors.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Defence in depth for PS3.15 A.5 / HIPAA 164.312(b): the archive itself can never rewrite or
# delete an audit record. Someone with the database file can drop the triggers, which is why
# the records are also hash-chained and the chain heads signed (nubis.security.audit).
_APPEND_ONLY = ("audit_log", "audit_checkpoints")


def upgrade() -> None:
    # Tables are spelled out here rather than taken from schema.py: a migration must keep
    # producing the same schema when schema.py moves on.
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("event_code", sa.String(16), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(256), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("record", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_user", "audit_log", ["user_id"])
    op.create_index("ix_audit_log_patient", "audit_log", ["patient_id"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("signed_at", sa.BigInteger, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_table(
        "audit_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        for table in _APPEND_ONLY:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                )


def downgrade() -> None:
    op.drop_table("audit_cursors")
    op.drop_table("audit_checkpoints")
    op.drop_index("ix_audit_log_patient", "audit_log")
    op.drop_index("ix_audit_log_user", "audit_log")
    op.drop_index("ix_audit_log_at", "audit_log")
    op.drop_table("audit_log")
