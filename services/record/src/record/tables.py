"""The record's tables (schema ``record``): current versions, full history, identifier index."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, MetaData, String, Table

from fhir_common.db import JsonDocument

SCHEMA = "record"
metadata = MetaData(schema=SCHEMA)

resources = Table(
    "resources",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    # NHS number, or feed|local id: everything about one person shares it (DESIGN.md)
    Column("patient_key", String(128), nullable=True),
    Column("source", String(128), nullable=True),
    Column("content", JsonDocument, nullable=False),
    Index("ix_resources_patient_key", "patient_key"),
)

history = Table(
    "resource_history",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", DateTime(timezone=True), nullable=False),
    Column("content", JsonDocument, nullable=False),
)

identifiers = Table(
    "identifiers",
    metadata,
    Column("resource_type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("system", String(256), primary_key=True),
    Column("value", String(256), primary_key=True),
    Index("ix_identifiers_lookup", "resource_type", "system", "value"),
)
