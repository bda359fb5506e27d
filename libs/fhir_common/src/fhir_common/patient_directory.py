"""A service's directory of patients already seen: ``Patient/<id>`` → patient key.

Ingest services consume ``fhir.Patient`` into it so that a resource sent later, which only
refers to its patient, is keyed (and so ordered on Kafka) with that patient's other messages.
Each service keeps the table in its own schema (``directory_table``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import orjson
from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.bus import PermanentError
from fhir_common.db import upsert
from fhir_common.events import Message, fhir_topic
from fhir_common.service import ServiceContext


def directory_table(metadata: MetaData) -> Table:
    return Table(
        "patient_keys",
        metadata,
        Column("patient_ref", String(80), primary_key=True),  # Patient/<id>
        Column("patient_key", String(128), nullable=False),
    )


async def keys_of(session: AsyncSession, table: Table, refs: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(refs))
    if not wanted:
        return {}
    query = select(table).where(table.c.patient_ref.in_(wanted))
    return {row.patient_ref: row.patient_key for row in await session.execute(query)}


async def remember_keys(session: AsyncSession, table: Table, keys: Mapping[str, str]) -> None:
    rows = [{"patient_ref": ref, "patient_key": key} for ref, key in keys.items()]
    await upsert(session, table, rows, ["patient_ref"])


def subscribe_directory(ctx: ServiceContext, table: Table) -> None:
    """Keep ``table`` up to date from ``fhir.Patient`` (consumer group ``<service>.patients``)."""
    assert ctx.db is not None
    db = ctx.db

    async def remember(messages: Sequence[Message]) -> None:
        keys: dict[str, str] = {}
        for message in messages:
            patient = orjson.loads(message.value)
            if not isinstance(patient, dict) or not patient.get("id"):
                raise PermanentError("fhir.Patient message without a Patient id")
            keys[f"Patient/{patient['id']}"] = message.key
        async with db.transaction() as session:
            await remember_keys(session, table, keys)

    ctx.bus.subscribe(
        f"{ctx.name}.patients", remember, service=ctx.name, topics=[fhir_topic("Patient")]
    )
