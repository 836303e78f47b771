"""Studies whose objects await re-keying under the patient a correction filed them under.

Revision ID: 0016
Revises: 0015

Studies that a correction moved before this revision have their objects under the key of the
patient they arrived with: each gets a row naming that patient, and one ``rekey`` job is
queued to re-encrypt them (nubis.services.study_rekey; only an archive that encrypts runs it).
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Spelled out rather than taken from schema.py, so this revision keeps producing the same
    # table when schema.py moves on.
    op.create_table(
        "study_rekeys",
        sa.Column(
            "study_pk",
            sa.Integer,
            sa.ForeignKey("studies.id", ondelete="CASCADE"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("patients", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("since", sa.BigInteger, nullable=False),
    )
    conn = op.get_bind()
    moved = conn.execute(
        sa.text(
            "SELECT studies.id, study_overlays.stored_patient_id FROM studies "
            "JOIN study_overlays ON study_overlays.study_pk = studies.id "
            "WHERE COALESCE(studies.patient_id, '') "
            "<> COALESCE(study_overlays.stored_patient_id, '')"
        )
    ).all()
    if not moved:
        return
    now = time.time_ns() // 1_000_000
    conn.execute(
        sa.text(
            "INSERT INTO study_rekeys (study_pk, patients, version, since) "
            "VALUES (:pk, :patients, 1, :now)"
        ),
        [{"pk": pk, "patients": json.dumps([stored or ""]), "now": now} for pk, stored in moved],
    )
    conn.execute(
        sa.text(
            "INSERT INTO jobs (kind, params, state, progress_done, attempts, max_attempts, "
            "cancel_requested, not_before, created_at, created_by) "
            "VALUES ('rekey', '{}', 'queued', 0, 0, 3, 0, :now, :now, 'migration 0016')"
        ),
        {"now": now},
    )


def downgrade() -> None:
    op.drop_table("study_rekeys")
