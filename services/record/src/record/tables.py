"""The record's tables (schema ``record``).

* ``resources``: the current version of every resource (JSONB), with its patient key, the feed
  and care setting it came from, and a hash of its content (to tell a resend from a change).
* ``resource_history``: every earlier version. The current one lives in ``resources`` only, so a
  new resource is written once, not twice.
* ``search_*``: the search index, one table per kind of parameter (see ``indexing``). Each has a
  single lookup index: the parameter and its value, then the resource id, so that it serves both
  "which resources have this value" and "has this resource this value" (the probe of a search
  that another parameter drives); a token's system and a reference's target type come after the
  id, since searches often leave them out. Date and string rows also have an index by resource
  (sorting). Rows of a replaced version are deleted by value, which the lookup index serves, so
  token, reference and quantity rows need no second index.
* ``person_links``: patient keys that belong to another person (a Patient that gained an NHS
  number, a merge). Any key not in it is its own person.
* ``pending_merges``: merges whose other Patient has not arrived yet.
* ``outbox``: ``record.changes`` messages committed with the data, one row per batch, deleted
  once published.
* ``consumer_positions``: how far each topic partition has been stored (replays are skipped).
* ``index_state``: the version of the indexing rules the search tables were built with.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from fhir_common.db import JsonDocument

SCHEMA = "record"
metadata = MetaData(schema=SCHEMA)

# Byte-wise ordering on PostgreSQL too, so that "starts with" is a range scan of the index.
SortableText = Text().with_variant(Text(collation="C"), "postgresql")
Serial = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)

resources = Table(
    "resources",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", Timestamp, nullable=False),
    # NHS number, or feed|local id: everything about one person shares it (DESIGN.md)
    Column("patient_key", String(128), nullable=True),
    Column("source", String(128), nullable=True),
    Column("setting", String(32), nullable=True),
    Column("content_hash", LargeBinary, nullable=True),
    Column("content", JsonDocument, nullable=False),
    Index("ix_resources_patient", "patient_key", "resource_type", "id"),
    Index("ix_resources_last_updated", "resource_type", "last_updated"),
)

history = Table(
    "resource_history",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", Timestamp, nullable=False),
    Column("content", JsonDocument, nullable=False),
    Index("ix_history_last_updated", "resource_type", "last_updated"),
)

search_token = Table(
    "search_token",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("id", String(64), nullable=False),
    Index("ix_search_token", "resource_type", "param", "code", "id", "system"),
)

search_string = Table(
    "search_string",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", SortableText, nullable=False),
    Column("exact", Text, nullable=False),
    Column("id", String(64), nullable=False),
    Index("ix_search_string", "resource_type", "param", "value", "id"),
    Index("ix_search_string_resource", "resource_type", "id"),
)

search_date = Table(
    "search_date",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", Timestamp, nullable=False),
    Column("high", Timestamp, nullable=False),
    Column("id", String(64), nullable=False),
    Index("ix_search_date", "resource_type", "param", "low", "high"),
    Index("ix_search_date_resource", "resource_type", "id", "param"),
)

search_reference = Table(
    "search_reference",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Index("ix_search_reference", "resource_type", "param", "target_id", "id", "target_type"),
)

search_quantity = Table(
    "search_quantity",
    metadata,
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("value", Float, nullable=False),
    Column("system", Text, nullable=False),
    Column("code", Text, nullable=False),
    Column("unit", Text, nullable=False),
    Column("id", String(64), nullable=False),
    Index("ix_search_quantity", "resource_type", "param", "code", "value", "id"),
)

person_links = Table(
    "person_links",
    metadata,
    Column("patient_key", String(128), primary_key=True),
    Column("person", String(128), nullable=False),
    Column("reason", String(32), nullable=False),  # nhs-number | merge | key-change
    Column("linked_at", Timestamp, nullable=False),
    Index("ix_person_links_person", "person"),
)

pending_merges = Table(
    "pending_merges",
    metadata,
    Column("retired", String(64), primary_key=True),  # Patient id
    Column("survivor", String(64), primary_key=True),  # Patient id
    Column("noted_at", Timestamp, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Serial, primary_key=True, autoincrement=True),
    Column("created_at", Timestamp, nullable=False),
    Column("messages", LargeBinary, nullable=False),
)

# The highest offset of each topic partition whose messages are committed here, written in the
# same transaction as what they brought: a batch delivered again after a crash (offsets are
# committed to Kafka only after the database) is recognised message by message and skipped,
# so an older message replayed after a newer one never makes a version of its own.
consumer_positions = Table(
    "consumer_positions",
    metadata,
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, nullable=False),
)

index_state = Table(
    "index_state",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("version", Integer, nullable=False),
)

SEARCH_TABLES = (search_token, search_string, search_date, search_reference, search_quantity)
