"""Baseline schema: studies, series, requests, instances, doomed blobs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from nubis.index.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The baseline is the schema as first released; every later change is an explicit migration,
    # and tests/unit/test_index.py checks a migrated database against schema.py.
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
