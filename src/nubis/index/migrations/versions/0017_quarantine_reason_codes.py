"""Studies held in quarantine say why as reason codes (issue 12): quarantined_studies.reason
holds the codes of the conflicts the study is held for, separated by spaces
("patient-conflict", "series-conflict"), rather than a sentence.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# The only reason revision 0014's code wrote: the patient-conflict warning's text.
_PATIENT_CONFLICT_TEXT = "the study holds another Patient ID (0010,0020)%"


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE quarantined_studies SET reason = 'patient-conflict' WHERE reason LIKE :text"
        ).bindparams(text=_PATIENT_CONFLICT_TEXT)
    )


def downgrade() -> None:
    # The codes stay readable to the older code, which only shows the reason.
    pass
