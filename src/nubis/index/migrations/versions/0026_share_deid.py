"""De-identified share links (issue 14): a link's profile and key, or its research project.

Revision ID: 0026
Revises: 0025
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("deid_project_id", sa.Integer),
    ("deid_profile_toml", sa.Text),
    ("deid_key_subject", sa.String(64)),
    ("deid_key_id", sa.String(255)),
    ("deid_key_wrapped_subject", sa.String(255)),
    ("deid_key_ciphertext", sa.LargeBinary),
)


def upgrade() -> None:
    for name, kind in _COLUMNS:
        op.add_column("share_links", sa.Column(name, kind))


def downgrade() -> None:
    with op.batch_alter_table("share_links") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
