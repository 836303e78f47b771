"""Append-only audit tables on PostgreSQL too (0002 made them append-only on SQLite).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_APPEND_ONLY = ("audit_log", "audit_checkpoints")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Defence in depth, as on SQLite: the archive's own database user can never rewrite or
    # delete an audit record; the hash chain and signed heads catch whoever drops the trigger.
    op.execute(
        "CREATE FUNCTION nubis_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RAISE EXCEPTION '% is append-only', TG_TABLE_NAME; END $$"
    )
    for table in _APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION nubis_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in _APPEND_ONLY:
        op.execute(f"DROP TRIGGER {table}_append_only ON {table}")
    op.execute("DROP FUNCTION nubis_append_only()")
