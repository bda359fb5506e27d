"""Identifier index, digests of what was published, bulk import jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op

from fhir_common.db import JsonDocument

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "ingest_gp"


def upgrade() -> None:
    op.create_table(
        "identifiers",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("system", sa.String(255), primary_key=True),
        sa.Column("value", sa.String(255), primary_key=True),
        sa.Column("resource_ref", sa.String(100), primary_key=True),
        sa.Column("feed", sa.String(64), nullable=False),
        sa.Column("patient_key", sa.String(128), nullable=True),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_identifiers_value", "identifiers", ["resource_type", "value"], schema=SCHEMA
    )
    op.create_table(
        "published",
        sa.Column("resource_ref", sa.String(100), primary_key=True),
        sa.Column("digest", sa.String(32), nullable=False),
        sa.Column("source_digest", sa.String(32), nullable=True),
        schema=SCHEMA,
    )
    op.create_index("ix_published_source_digest", "published", ["source_digest"], schema=SCHEMA)
    op.create_table(
        "import_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("feed", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner", sa.String(80), nullable=True),
        sa.Column("request", JsonDocument, nullable=False),
        sa.Column("position", JsonDocument, nullable=False),
        sa.Column("progress", JsonDocument, nullable=False),
        sa.Column("total_bytes", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        schema=SCHEMA,
    )
    op.create_index("ix_import_jobs_status", "import_jobs", ["status"], schema=SCHEMA)
    op.create_table(
        "import_errors",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("input", sa.Integer, primary_key=True),
        sa.Column("line", sa.BigInteger, primary_key=True),
        sa.Column("outcome", JsonDocument, nullable=False),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("import_errors", schema=SCHEMA)
    op.drop_index("ix_import_jobs_status", "import_jobs", schema=SCHEMA)
    op.drop_table("import_jobs", schema=SCHEMA)
    op.drop_index("ix_published_source_digest", "published", schema=SCHEMA)
    op.drop_table("published", schema=SCHEMA)
    op.drop_index("ix_identifiers_value", "identifiers", schema=SCHEMA)
    op.drop_table("identifiers", schema=SCHEMA)
