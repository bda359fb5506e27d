"""Messages received (idempotency), patient merges and encounter state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from fhir_common.db import JsonDocument

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "ingest_acute"


def upgrade() -> None:
    op.create_table(
        "received",
        sa.Column("feed", sa.String(64), primary_key=True),
        sa.Column("control_id", sa.String(199), primary_key=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("ack_code", sa.String(2), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("error_code", sa.String(3), nullable=True),
        sa.Column("error_location", sa.String(16), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "merges",
        sa.Column("feed", sa.String(64), primary_key=True),
        sa.Column("old_source", sa.String(128), primary_key=True),
        sa.Column("survivor_source", sa.String(128), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_merges_survivor", "merges", ["feed", "survivor_source"], schema=SCHEMA)
    op.create_table(
        "encounters",
        sa.Column("encounter_id", sa.String(36), primary_key=True),
        sa.Column("state", JsonDocument, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("encounters", schema=SCHEMA)
    op.drop_index("ix_merges_survivor", table_name="merges", schema=SCHEMA)
    op.drop_table("merges", schema=SCHEMA)
    op.drop_table("received", schema=SCHEMA)
