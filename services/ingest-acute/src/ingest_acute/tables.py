"""ingest-acute's tables (schema ``ingest_acute``)."""

from sqlalchemy import Column, DateTime, Index, MetaData, String, Table, Text

from fhir_common.db import JsonDocument
from fhir_common.patient_directory import directory_table

SCHEMA = "ingest_acute"
metadata = MetaData(schema=SCHEMA)

# patients already seen, so later messages about them get their key (see patient_directory);
# written by the intake as it publishes (store.Store.remember)
patient_keys = directory_table(metadata)

# Every message taken in, by sender and MSH-10, with the answer it got: a message sent again
# (same control id, same content) is answered the same way and not processed twice.
received = Table(
    "received",
    metadata,
    Column("feed", String(64), primary_key=True),
    Column("control_id", String(199), primary_key=True),  # MSH-10 is ST(199) since v2.5
    Column("digest", String(64), nullable=False),  # sha256 of the message text
    Column("ack_code", String(2), nullable=False),
    Column("reason", Text, nullable=True),  # why it was not accepted (AE/AR)...
    Column("error_code", String(3), nullable=True),  # ...as an HL7 table 0357 code
    Column("error_location", String(16), nullable=True),  # ...and where: "PID-3"
    Column("received_at", DateTime(timezone=True), nullable=False),
)

# A40 merges: a later message about the old patient is about the survivor. Chains are kept
# flat (old -> final survivor), so one lookup always suffices.
merges = Table(
    "merges",
    metadata,
    Column("feed", String(64), primary_key=True),
    Column("old_source", String(128), primary_key=True),
    Column("survivor_source", String(128), nullable=False),
    Column("merged_at", DateTime(timezone=True), nullable=False),
    Index("ix_merges_survivor", "feed", "survivor_source"),
)

# What earlier messages established about each encounter: its status, start and location
# history, which a later message does not repeat (see encounters.EncounterState).
encounters = Table(
    "encounters",
    metadata,
    Column("encounter_id", String(36), primary_key=True),
    Column("state", JsonDocument, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
