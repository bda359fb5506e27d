"""ingest-gp's tables (schema ``ingest_gp``).

* ``patient_keys``: patients already seen, so that later resources about them get their key
  (see ``fhir_common.patient_directory``).
* ``identifiers``: identifier → resource, for conditional references and conditional creates
  (``Patient?identifier=system|value``); fed by what ingest-gp publishes and by ``fhir.Patient``.
* ``published``: a digest of every resource last published, per resource id, so that a bundle,
  file or extract delivered again publishes nothing new (``idempotency``).
* ``import_jobs`` / ``import_errors``: bulk ``$import`` jobs, which outlive the request that
  started them (``bulk``).
"""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from fhir_common.db import JsonDocument
from fhir_common.patient_directory import directory_table

SCHEMA = "ingest_gp"
metadata = MetaData(schema=SCHEMA)

# patients already seen, so later resources about them get their key (see patient_directory)
patient_keys = directory_table(metadata)

identifiers = Table(
    "identifiers",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("system", String(255), primary_key=True),  # "" when the identifier has none
    Column("value", String(255), primary_key=True),
    Column("resource_ref", String(100), primary_key=True),  # Patient/<id>
    Column("feed", String(64), nullable=False),
    Column("patient_key", String(128), nullable=True),
    Index("ix_identifiers_value", "resource_type", "value"),
)

published = Table(
    "published",
    metadata,
    Column("resource_ref", String(100), primary_key=True),  # <Type>/<id>
    Column("digest", String(32), nullable=False),  # blake2b-128 of key + resource, hex
    # of the input it was made from ($import lines): an unchanged line is skipped unchecked
    Column("source_digest", String(32), nullable=True),
    Index("ix_published_source_digest", "source_digest"),
)

import_jobs = Table(
    "import_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("feed", String(64), nullable=False),
    Column("status", String(16), nullable=False),  # queued|running|completed|failed|cancelled
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=True),
    Column("owner", String(80), nullable=True),  # the process running it
    Column("request", JsonDocument, nullable=False),  # inputs, scopes, upload or not
    Column("position", JsonDocument, nullable=False),  # where to resume: input, byte, line
    Column("progress", JsonDocument, nullable=False),  # counts so far
    Column("total_bytes", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Index("ix_import_jobs_status", "status"),
)

import_errors = Table(
    "import_errors",
    metadata,
    Column("job_id", String(36), primary_key=True),
    Column("input", Integer, primary_key=True),
    Column("line", BigInteger, primary_key=True),
    Column("outcome", JsonDocument, nullable=False),
)
