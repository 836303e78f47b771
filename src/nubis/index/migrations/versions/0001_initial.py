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


# The tables of the first release. Later migrations add tables to schema.py too, and
# create_all over the whole metadata would create them here, before their own migration runs.
BASELINE_TABLES = ("studies", "series", "series_requests", "instances", "doomed_blobs")


def upgrade() -> None:
    # The baseline is the schema as first released; every later change is an explicit migration,
    # and tests/unit/test_index.py checks a migrated database against schema.py.
    metadata.create_all(op.get_bind(), tables=[metadata.tables[n] for n in BASELINE_TABLES])


def downgrade() -> None:
    metadata.drop_all(op.get_bind(), tables=[metadata.tables[n] for n in BASELINE_TABLES])
