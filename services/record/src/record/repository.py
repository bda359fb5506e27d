"""Reads and writes of the record's tables. No commits here: the caller's unit of work does."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from record.tables import history as history_table
from record.tables import identifiers, resources

ResourceKey = tuple[str, str]  # (resource type, id)


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    patient_key: str | None
    source: str | None
    content: dict[str, Any]


def _stored(row: Any) -> StoredResource:
    return StoredResource(
        row.resource_type,
        row.id,
        row.version_id,
        row.last_updated,
        row.patient_key,
        row.source,
        row.content,
    )


async def current_versions(
    session: AsyncSession, keys: Iterable[ResourceKey]
) -> dict[ResourceKey, StoredResource]:
    wanted = list(set(keys))
    if not wanted:
        return {}
    query = select(resources).where(tuple_(resources.c.resource_type, resources.c.id).in_(wanted))
    return {(r.resource_type, r.id): _stored(r) for r in (await session.execute(query))}


async def save_versions(
    session: AsyncSession,
    *,
    new: Sequence[StoredResource],
    changed: Sequence[StoredResource],
    history: Sequence[StoredResource],
) -> None:
    """Insert new current rows, overwrite changed ones, and append every version to history."""
    if new:
        await session.execute(insert(resources), [_current_row(r) for r in new])
    for r in changed:
        await session.execute(
            update(resources)
            .where(resources.c.resource_type == r.resource_type, resources.c.id == r.id)
            .values(_current_row(r))
        )
    if history:
        await session.execute(insert(history_table), [_history_row(r) for r in history])


def _current_row(r: StoredResource) -> dict[str, Any]:
    return {
        "resource_type": r.resource_type,
        "id": r.id,
        "version_id": r.version_id,
        "last_updated": r.last_updated,
        "patient_key": r.patient_key,
        "source": r.source,
        "content": r.content,
    }


def _history_row(r: StoredResource) -> dict[str, Any]:
    return {
        "resource_type": r.resource_type,
        "id": r.id,
        "version_id": r.version_id,
        "last_updated": r.last_updated,
        "content": r.content,
    }


async def replace_identifiers(
    session: AsyncSession, key: ResourceKey, pairs: Iterable[tuple[str, str]]
) -> None:
    resource_type, resource_id = key
    await session.execute(
        delete(identifiers).where(
            identifiers.c.resource_type == resource_type, identifiers.c.id == resource_id
        )
    )
    rows = [
        {"resource_type": resource_type, "id": resource_id, "system": s, "value": v}
        for s, v in sorted(set(pairs))
    ]
    if rows:
        await session.execute(insert(identifiers), rows)


async def read(
    session: AsyncSession, resource_type: str, resource_id: str
) -> StoredResource | None:
    query = select(resources).where(
        resources.c.resource_type == resource_type, resources.c.id == resource_id
    )
    row = (await session.execute(query)).first()
    return _stored(row) if row else None


async def find_by_identifier(
    session: AsyncSession, resource_type: str, system: str | None, value: str, limit: int
) -> list[StoredResource]:
    matching = select(identifiers.c.id).where(
        identifiers.c.resource_type == resource_type, identifiers.c.value == value
    )
    if system is not None:
        matching = matching.where(identifiers.c.system == system)
    query = (
        select(resources)
        .where(resources.c.resource_type == resource_type, resources.c.id.in_(matching))
        .order_by(resources.c.id)
        .limit(limit)
    )
    return [_stored(r) for r in await session.execute(query)]


async def for_patient(session: AsyncSession, patient_key: str, limit: int) -> list[StoredResource]:
    query = (
        select(resources)
        .where(resources.c.patient_key == patient_key)
        .order_by(resources.c.resource_type, resources.c.id)
        .limit(limit)
    )
    return [_stored(r) for r in await session.execute(query)]
