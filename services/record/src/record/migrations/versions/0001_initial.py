"""Current resources, their history, and the identifier index.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from fhir_common.db import JsonDocument

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = "record"


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("patient_key", sa.String(128), nullable=True),
        sa.Column("source", sa.String(128), nullable=True),
        sa.Column("content", JsonDocument, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_resources_patient_key", "resources", ["patient_key"], schema=SCHEMA)
    op.create_table(
        "resource_history",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", JsonDocument, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "identifiers",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("system", sa.String(256), primary_key=True),
        sa.Column("value", sa.String(256), primary_key=True),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_identifiers_lookup",
        "identifiers",
        ["resource_type", "system", "value"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("identifiers", schema=SCHEMA)
    op.drop_table("resource_history", schema=SCHEMA)
    op.drop_table("resources", schema=SCHEMA)
