"""Search index, persons across providers, transactional outbox, consumer positions; history
keeps earlier versions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

The identifier table of 0001 is replaced by ``search_token``. ``index_state`` starts at 0, so
the service rebuilds the search index (and content hashes) from the stored resources at its
next start (``record.reindex``). A downgrade restores 0001's tables but not the identifiers
in them (0001 rebuilt them only as resources arrived).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = "record"
SortableText = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
Timestamp = sa.DateTime(timezone=True)


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.add_column("resources", sa.Column("setting", sa.String(32)), schema=SCHEMA)
    op.add_column("resources", sa.Column("content_hash", sa.LargeBinary), schema=SCHEMA)
    op.drop_index("ix_resources_patient_key", table_name="resources", schema=SCHEMA)
    op.create_index(
        "ix_resources_patient", "resources", ["patient_key", "resource_type", "id"], schema=SCHEMA
    )
    op.create_index(
        "ix_resources_last_updated", "resources", ["resource_type", "last_updated"], schema=SCHEMA
    )
    # history now holds earlier versions only: the current one is in resources
    op.execute(
        "DELETE FROM record.resource_history WHERE EXISTS (SELECT 1 FROM record.resources r "
        "WHERE r.resource_type = resource_history.resource_type "
        "AND r.id = resource_history.id AND r.version_id = resource_history.version_id)"
    )
    op.create_index(
        "ix_history_last_updated",
        "resource_history",
        ["resource_type", "last_updated"],
        schema=SCHEMA,
    )
    op.drop_index("ix_identifiers_lookup", table_name="identifiers", schema=SCHEMA)
    op.drop_table("identifiers", schema=SCHEMA)

    op.create_table(
        "search_token",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_search_token",
        "search_token",
        ["resource_type", "param", "code", "id", "system"],
        schema=SCHEMA,
    )
    op.create_table(
        "search_string",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("value", SortableText, nullable=False),
        sa.Column("exact", sa.Text, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_search_string",
        "search_string",
        ["resource_type", "param", "value", "id"],
        schema=SCHEMA,
    )
    op.create_index(
        "ix_search_string_resource", "search_string", ["resource_type", "id"], schema=SCHEMA
    )
    op.create_table(
        "search_date",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("low", Timestamp, nullable=False),
        sa.Column("high", Timestamp, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_search_date", "search_date", ["resource_type", "param", "low", "high"], schema=SCHEMA
    )
    op.create_index(
        "ix_search_date_resource", "search_date", ["resource_type", "id", "param"], schema=SCHEMA
    )
    op.create_table(
        "search_reference",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("target_type", sa.String(64), nullable=False),
        sa.Column("target_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_search_reference",
        "search_reference",
        ["resource_type", "param", "target_id", "id", "target_type"],
        schema=SCHEMA,
    )
    op.create_table(
        "search_quantity",
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("param", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("code", sa.Text, nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_search_quantity",
        "search_quantity",
        ["resource_type", "param", "code", "value", "id"],
        schema=SCHEMA,
    )
    op.create_table(
        "person_links",
        sa.Column("patient_key", sa.String(128), primary_key=True),
        sa.Column("person", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("linked_at", Timestamp, nullable=False),
        schema=SCHEMA,
    )
    op.create_index("ix_person_links_person", "person_links", ["person"], schema=SCHEMA)
    op.create_table(
        "pending_merges",
        sa.Column("retired", sa.String(64), primary_key=True),
        sa.Column("survivor", sa.String(64), primary_key=True),
        sa.Column("noted_at", Timestamp, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("messages", sa.LargeBinary, nullable=False),
        schema=SCHEMA,
    )
    op.create_table(
        "consumer_positions",
        sa.Column("topic", sa.String(249), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True),
        sa.Column("offset", sa.BigInteger, nullable=False),
        schema=SCHEMA,
    )
    index_state = op.create_table(
        "index_state",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        schema=SCHEMA,
    )
    op.bulk_insert(index_state, [{"name": "search", "version": 0}])

    if _postgresql():
        # lz4 compresses and decompresses resources several times faster than the default pglz
        op.execute(
            """
            DO $$
            BEGIN
                IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
                           AND 'lz4' = ANY(enumvals)) THEN
                    ALTER TABLE record.resources ALTER COLUMN content SET COMPRESSION lz4;
                    ALTER TABLE record.resource_history ALTER COLUMN content SET COMPRESSION lz4;
                    ALTER TABLE record.outbox ALTER COLUMN messages SET COMPRESSION lz4;
                END IF;
            END $$;
            """
        )


def downgrade() -> None:
    for table in ("index_state", "consumer_positions", "outbox", "pending_merges", "person_links"):
        op.drop_table(table, schema=SCHEMA)
    for table in (
        "search_quantity",
        "search_reference",
        "search_date",
        "search_string",
        "search_token",
    ):
        op.drop_table(table, schema=SCHEMA)
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
    op.execute(
        "INSERT INTO record.resource_history (resource_type, id, version_id, last_updated, "
        "content) SELECT resource_type, id, version_id, last_updated, content "
        "FROM record.resources"
    )
    op.drop_index("ix_history_last_updated", table_name="resource_history", schema=SCHEMA)
    op.drop_index("ix_resources_last_updated", table_name="resources", schema=SCHEMA)
    op.drop_index("ix_resources_patient", table_name="resources", schema=SCHEMA)
    op.create_index("ix_resources_patient_key", "resources", ["patient_key"], schema=SCHEMA)
    with op.batch_alter_table("resources", schema=SCHEMA) as batch:
        batch.drop_column("content_hash")
        batch.drop_column("setting")
