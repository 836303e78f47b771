"""Share links of the web face: share_links, and grants narrowed to one series.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on. Existing grants keep series_uid NULL: the whole study or
    # patient, as before.
    op.add_column("grants", sa.Column("series_uid", sa.String(64)))
    op.create_table(
        "share_links",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uids", sa.Text),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
        sa.Column("revoked_by", sa.String(256)),
        sa.Column("pin_hash", sa.String(256)),
        sa.Column("can_download", sa.Boolean, nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("last_opened_at", sa.BigInteger),
        sa.Column("open_count", sa.Integer, nullable=False),
    )
    op.create_index("ix_share_links_study", "share_links", ["tenant", "study_uid"])
    op.create_index("ix_share_links_created_by", "share_links", ["tenant", "created_by"])


def downgrade() -> None:
    op.drop_index("ix_share_links_created_by", "share_links")
    op.drop_index("ix_share_links_study", "share_links")
    op.drop_table("share_links")
    # Series grants would widen to their whole study without the column, and share links'
    # grants name links that no longer exist: they go first.
    op.execute("DELETE FROM grants WHERE series_uid IS NOT NULL OR subject LIKE 'share:%'")
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("series_uid")
