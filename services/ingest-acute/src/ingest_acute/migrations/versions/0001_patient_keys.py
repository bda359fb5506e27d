"""Keys of patients already seen.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_keys",
        sa.Column("patient_ref", sa.String(80), primary_key=True),
        sa.Column("patient_key", sa.String(128), nullable=False),
        schema="ingest_acute",
    )


def downgrade() -> None:
    op.drop_table("patient_keys", schema="ingest_acute")
