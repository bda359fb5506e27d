"""Reads and writes of the record's tables. No commits here: the caller's unit of work does.

Writes come in batches and cost a fixed number of statements per batch, whatever its size: on
PostgreSQL, new rows go in with binary ``COPY`` and changed rows with one statement over arrays
(``UPDATE ... FROM unnest(...)``), through the session's own asyncpg connection, so the JSON text
goes to the server as it is and is parsed once, there; on SQLite (embedded mode) the same rows go
through ``executemany``.

Reads return the stored JSON as text or UTF-8 bytes (``StoredResource.raw``), so that responses
can be assembled without parsing and re-serialising every resource.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import orjson
from sqlalchemy import Text, and_, bindparam, cast, delete, insert, literal, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.sql import column, table

from fhir_common.db import upsert
from record.indexing import IndexRows
from record.tables import (
    SCHEMA,
    consumer_positions,
    history,
    outbox,
    resources,
    search_date,
    search_quantity,
    search_reference,
    search_string,
    search_token,
)

ResourceKey = tuple[str, str]  # (resource type, id)
Position = tuple[str, int]  # (topic, partition)


# --- what is stored ------------------------------------------------------------------------------


@dataclass
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    patient_key: str | None
    source: str | None
    raw: str | bytes  # the resource as stored, JSON text (UTF-8 bytes from the fast paths)
    setting: str | None = None

    @property
    def body(self) -> bytes:
        return self.raw.encode() if isinstance(self.raw, str) else self.raw

    @cached_property
    def content(self) -> dict[str, Any]:
        parsed: dict[str, Any] = orjson.loads(self.raw)
        return parsed

    @property
    def key(self) -> ResourceKey:
        return (self.resource_type, self.id)


@dataclass(frozen=True)
class CurrentState:
    """What the write path needs to know of a stored resource (no content)."""

    version_id: int
    content_hash: bytes | None
    patient_key: str | None


@dataclass(frozen=True)
class CurrentRow:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    patient_key: str | None
    source: str | None
    setting: str | None
    content_hash: bytes
    raw: str
    expected_version: int = 0  # the version it replaces (0: a new resource)


@dataclass
class IndexBatch:
    """Index rows of many resources, each row with its resource's type and id."""

    tokens: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    strings: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    dates: list[tuple[str, str, datetime, datetime, str]] = field(default_factory=list)
    references: list[tuple[str, str, str, str, str]] = field(default_factory=list)
    quantities: list[tuple[str, str, float, str, str, str, str]] = field(default_factory=list)

    def add(self, key: ResourceKey, rows: IndexRows) -> None:
        rt, rid = key
        self.tokens.extend((rt, p, s, c, rid) for p, s, c in rows.tokens)
        self.strings.extend((rt, p, v, e, rid) for p, v, e in rows.strings)
        self.dates.extend((rt, p, lo, hi, rid) for p, lo, hi in rows.dates)
        self.references.extend((rt, p, tt, ti, rid) for p, tt, ti in rows.references)
        self.quantities.extend((rt, p, v, s, c, u, rid) for p, v, s, c, u in rows.quantities)

    def __len__(self) -> int:
        return (
            len(self.tokens)
            + len(self.strings)
            + len(self.dates)
            + len(self.references)
            + len(self.quantities)
        )


@dataclass
class WriteBatch:
    archive: list[ResourceKey] = field(default_factory=list)  # current rows to move to history
    history: list[tuple[str, str, int, datetime, str]] = field(default_factory=list)
    inserts: list[CurrentRow] = field(default_factory=list)
    updates: list[CurrentRow] = field(default_factory=list)
    index_deletes: IndexBatch = field(default_factory=IndexBatch)
    index_inserts: IndexBatch = field(default_factory=IndexBatch)
    outbox: bytes | None = None


class ConcurrentUpdate(Exception):  # noqa: N818 - transient by design: the bus retries it
    """Another writer changed a resource between our read and our write: try the batch again."""


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind else "postgresql"


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _asyncpg(session: AsyncSession) -> Any:
    """The asyncpg connection under the session, inside the session's transaction (unless the
    session reads in autocommit mode, as the API does)."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    options = (
        connection.sync_connection.get_execution_options() if connection.sync_connection else {}
    )
    autocommit = options.get("isolation_level") == "AUTOCOMMIT"
    if not autocommit and not driver.is_in_transaction():
        await connection.exec_driver_sql("SELECT 1")  # SQLAlchemy begins lazily
    return driver


# --- the write path ------------------------------------------------------------------------------


async def current_states(
    session: AsyncSession, keys: Iterable[ResourceKey]
) -> dict[ResourceKey, CurrentState]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    if _dialect(session) == "postgresql":
        conn = await _asyncpg(session)
        rows = await conn.fetch(_STATES_SQL, [k[0] for k in wanted], [k[1] for k in wanted])
        return {(r[0], r[1]): CurrentState(r[2], r[3], r[4]) for r in rows}
    found: dict[ResourceKey, CurrentState] = {}
    for chunk in _chunks(wanted, 4000):
        query = select(
            resources.c.resource_type,
            resources.c.id,
            resources.c.version_id,
            resources.c.content_hash,
            resources.c.patient_key,
        ).where(tuple_(resources.c.resource_type, resources.c.id).in_(chunk))
        for r in await session.execute(query):
            found[(r[0], r[1])] = CurrentState(r[2], r[3], r[4])
    return found


async def raw_contents(
    session: AsyncSession, keys: Iterable[ResourceKey]
) -> dict[ResourceKey, str]:
    """The stored JSON of the current versions of ``keys``."""
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    if _dialect(session) == "postgresql":
        conn = await _asyncpg(session)
        rows = await conn.fetch(_CONTENTS_SQL, [k[0] for k in wanted], [k[1] for k in wanted])
        return {(r[0], r[1]): r[2] for r in rows}
    found: dict[ResourceKey, str] = {}
    for chunk in _chunks(wanted, 4000):
        query = select(
            resources.c.resource_type, resources.c.id, cast(resources.c.content, Text)
        ).where(tuple_(resources.c.resource_type, resources.c.id).in_(chunk))
        for r in await session.execute(query):
            found[(r[0], r[1])] = r[2]
    return found


async def write(session: AsyncSession, batch: WriteBatch) -> int | None:
    """Apply ``batch``; returns the id of its outbox row (None when it has none)."""
    if _dialect(session) == "postgresql":
        return await _write_postgresql(session, batch)
    return await _write_sqlite(session, batch)


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


_INDEX_SQL = {
    # table: (columns, their array types)
    "search_token": (
        ("resource_type", "param", "system", "code", "id"),
        ("text", "text", "text", "text", "text"),
    ),
    "search_string": (
        ("resource_type", "param", "value", "exact", "id"),
        ("text", "text", "text", "text", "text"),
    ),
    "search_date": (
        ("resource_type", "param", "low", "high", "id"),
        ("text", "text", "timestamptz", "timestamptz", "text"),
    ),
    "search_reference": (
        ("resource_type", "param", "target_type", "target_id", "id"),
        ("text", "text", "text", "text", "text"),
    ),
    "search_quantity": (
        ("resource_type", "param", "value", "system", "code", "unit", "id"),
        ("text", "text", "float8", "text", "text", "text", "text"),
    ),
}


def _index_parts(batch: IndexBatch) -> list[tuple[str, Sequence[tuple[Any, ...]]]]:
    return [
        ("search_token", batch.tokens),
        ("search_string", batch.strings),
        ("search_date", batch.dates),
        ("search_reference", batch.references),
        ("search_quantity", batch.quantities),
    ]


_STATES_SQL = """
SELECT r.resource_type, r.id, r.version_id, r.content_hash, r.patient_key
FROM record.resources r JOIN unnest($1::text[], $2::text[]) AS u(t, i)
ON r.resource_type = u.t AND r.id = u.i
"""
_CONTENTS_SQL = """
SELECT r.resource_type, r.id, r.content::text
FROM record.resources r JOIN unnest($1::text[], $2::text[]) AS u(t, i)
ON r.resource_type = u.t AND r.id = u.i
"""
_ARCHIVE_SQL = """
INSERT INTO record.resource_history (resource_type, id, version_id, last_updated, content)
SELECT r.resource_type, r.id, r.version_id, r.last_updated, r.content
FROM record.resources r JOIN unnest($1::text[], $2::text[]) AS u(t, i)
ON r.resource_type = u.t AND r.id = u.i
"""
# Only rows still at the version this batch read: another writer's change makes the count short.
_UPDATE_SQL = """
WITH changed AS (
    UPDATE record.resources r
    SET version_id = u.v, last_updated = u.l, patient_key = u.k, source = u.s, setting = u.g,
        content_hash = u.h, content = u.c::jsonb
    FROM unnest($1::text[], $2::text[], $3::int[], $4::timestamptz[], $5::text[], $6::text[],
                $7::text[], $8::bytea[], $9::text[], $10::int[])
         AS u(t, i, v, l, k, s, g, h, c, e)
    WHERE r.resource_type = u.t AND r.id = u.i AND r.version_id = u.e
    RETURNING 1
)
SELECT count(*) FROM changed
"""
_OUTBOX_SQL = "INSERT INTO record.outbox (created_at, messages) VALUES ($1, $2) RETURNING id"
_HASHES_SQL = """
UPDATE record.resources r SET content_hash = u.h
FROM unnest($1::text[], $2::text[], $3::bytea[]) AS u(t, i, h)
WHERE r.resource_type = u.t AND r.id = u.i
"""


def _index_delete(name: str) -> str:
    """The multi-row DELETE of one index table (names from ``_INDEX_SQL`` only)."""
    names, types = _INDEX_SQL[name]
    arrays = ", ".join(f"${n + 1}::{t}[]" for n, t in enumerate(types))
    matches = " AND ".join(f"x.{c} = u.{c}" for c in names)
    return f"DELETE FROM record.{name} x USING unnest({arrays}) AS u({', '.join(names)}) WHERE {matches}"  # noqa: S608, E501


_INDEX_DELETES = {name: _index_delete(name) for name in _INDEX_SQL}
_RESOURCE_COLUMNS = (
    "resource_type",
    "id",
    "version_id",
    "last_updated",
    "patient_key",
    "source",
    "setting",
    "content_hash",
    "content",
)
_HISTORY_COLUMNS = ("resource_type", "id", "version_id", "last_updated", "content")


async def _write_postgresql(session: AsyncSession, batch: WriteBatch) -> int | None:
    """New rows go in with binary COPY (no per-row statements, no array encoding); changed
    rows, rarer, with one statement over arrays per table."""
    conn = await _asyncpg(session)
    if batch.archive:
        await conn.execute(
            _ARCHIVE_SQL, [k[0] for k in batch.archive], [k[1] for k in batch.archive]
        )
    if batch.history:
        await conn.copy_records_to_table(
            "resource_history",
            schema_name=SCHEMA,
            columns=_HISTORY_COLUMNS,
            records=batch.history,
        )
    if batch.inserts:
        await conn.copy_records_to_table(
            "resources",
            schema_name=SCHEMA,
            columns=_RESOURCE_COLUMNS,
            records=[
                (
                    r.resource_type,
                    r.id,
                    r.version_id,
                    r.last_updated,
                    r.patient_key,
                    r.source,
                    r.setting,
                    r.content_hash,
                    r.raw,
                )
                for r in batch.inserts
            ],
        )
    if batch.updates:
        changed = await conn.fetchval(
            _UPDATE_SQL,
            *_current_columns(batch.updates),
            [r.expected_version for r in batch.updates],
        )
        if changed != len(batch.updates):
            raise ConcurrentUpdate(
                f"{len(batch.updates) - changed} resources changed under this batch"
            )
    for name, rows in _index_parts(batch.index_deletes):
        if rows:
            await conn.execute(_INDEX_DELETES[name], *_columns(rows, len(rows[0])))
    for name, rows in _index_parts(batch.index_inserts):
        if rows:
            await conn.copy_records_to_table(
                name, schema_name=SCHEMA, columns=_INDEX_SQL[name][0], records=rows
            )
    if batch.outbox is None:
        return None
    outbox_id: int = await conn.fetchval(_OUTBOX_SQL, datetime.now(UTC), batch.outbox)
    return outbox_id


def _current_columns(rows: Sequence[CurrentRow]) -> list[list[Any]]:
    return [
        [r.resource_type for r in rows],
        [r.id for r in rows],
        [r.version_id for r in rows],
        [r.last_updated for r in rows],
        [r.patient_key for r in rows],
        [r.source for r in rows],
        [r.setting for r in rows],
        [r.content_hash for r in rows],
        [r.raw for r in rows],
    ]


# SQLite: the same tables seen with the content as text, so that it is stored as sent.
def _text_view(name: str, *names: str) -> Any:
    return table(name, *(column(n) for n in names), schema=SCHEMA)


_RESOURCES_TEXT = _text_view("resources", *_RESOURCE_COLUMNS)
_HISTORY_TEXT = _text_view("resource_history", *_HISTORY_COLUMNS)
_SQLITE_INDEX = {
    "search_token": search_token,
    "search_string": search_string,
    "search_date": search_date,
    "search_reference": search_reference,
    "search_quantity": search_quantity,
}


def _sqlite_time(moment: datetime) -> str:
    # the format SQLAlchemy's SQLite DateTime uses, so that stored values compare as text
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _current_dict(r: CurrentRow) -> dict[str, Any]:
    return {
        "resource_type": r.resource_type,
        "id": r.id,
        "version_id": r.version_id,
        "last_updated": _sqlite_time(r.last_updated),
        "patient_key": r.patient_key,
        "source": r.source,
        "setting": r.setting,
        "content_hash": r.content_hash,
        "content": r.raw,
    }


async def _write_sqlite(session: AsyncSession, batch: WriteBatch) -> int | None:
    for chunk in _chunks(batch.archive, 4000):
        await session.execute(
            insert(history).from_select(
                ["resource_type", "id", "version_id", "last_updated", "content"],
                select(
                    resources.c.resource_type,
                    resources.c.id,
                    resources.c.version_id,
                    resources.c.last_updated,
                    resources.c.content,
                ).where(tuple_(resources.c.resource_type, resources.c.id).in_(chunk)),
            )
        )
    if batch.history:
        await session.execute(
            insert(_HISTORY_TEXT),
            [
                {
                    "resource_type": t,
                    "id": i,
                    "version_id": v,
                    "last_updated": _sqlite_time(lu),
                    "content": c,
                }
                for t, i, v, lu, c in batch.history
            ],
        )
    if batch.inserts:
        await session.execute(insert(_RESOURCES_TEXT), [_current_dict(r) for r in batch.inserts])
    for r in batch.updates:
        result = await session.execute(
            update(_RESOURCES_TEXT)
            .where(
                _RESOURCES_TEXT.c.resource_type == r.resource_type,
                _RESOURCES_TEXT.c.id == r.id,
                _RESOURCES_TEXT.c.version_id == r.expected_version,
            )
            .values(_current_dict(r))
        )
        if getattr(result, "rowcount", 1) != 1:
            raise ConcurrentUpdate(f"{r.resource_type}/{r.id} changed under this batch")
    for name, rows in _index_parts(batch.index_deletes):
        if rows:
            target = _SQLITE_INDEX[name]
            names = _INDEX_SQL[name][0]
            statement = delete(target).where(
                and_(*(target.c[n] == bindparam(f"p_{n}") for n in names))
            )
            await session.execute(statement, [_sqlite_row(names, row, "p_") for row in rows])
    for name, rows in _index_parts(batch.index_inserts):
        if rows:
            target = _SQLITE_INDEX[name]
            names = _INDEX_SQL[name][0]
            await session.execute(insert(target), [_sqlite_row(names, row, "") for row in rows])
    if batch.outbox is None:
        return None
    created = await session.execute(
        insert(outbox)
        .values(created_at=datetime.now(UTC), messages=batch.outbox)
        .returning(outbox.c.id)
    )
    return int(created.scalar_one())


def _sqlite_row(names: Sequence[str], row: tuple[Any, ...], prefix: str) -> dict[str, Any]:
    return {f"{prefix}{n}": v for n, v in zip(names, row, strict=True)}


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def positions(session: AsyncSession, wanted: Iterable[Position]) -> dict[Position, int]:
    """The highest stored offset of each topic partition (absent: nothing stored yet)."""
    keys = sorted(set(wanted))
    if not keys:
        return {}
    query = select(
        consumer_positions.c.topic, consumer_positions.c.partition, consumer_positions.c.offset
    ).where(tuple_(consumer_positions.c.topic, consumer_positions.c.partition).in_(keys))
    return {(r[0], r[1]): r[2] for r in await session.execute(query)}


async def advance_positions(session: AsyncSession, reached: dict[Position, int]) -> None:
    rows = [{"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(reached.items())]
    await upsert(session, consumer_positions, rows, ["topic", "partition"])


# --- reads ---------------------------------------------------------------------------------------

_RAW = cast(resources.c.content, Text).label("raw")
_STORED_COLUMNS = (
    resources.c.resource_type,
    resources.c.id,
    resources.c.version_id,
    resources.c.last_updated,
    resources.c.patient_key,
    resources.c.source,
    _RAW,
    resources.c.setting,
)


def stored(row: Any) -> StoredResource:
    return StoredResource(
        row.resource_type,
        row.id,
        row.version_id,
        aware(row.last_updated),
        row.patient_key,
        row.source,
        row.raw,
        row.setting,
    )


def stored_select() -> Any:
    return select(*_STORED_COLUMNS)


async def read(
    session: AsyncSession, resource_type: str, resource_id: str
) -> StoredResource | None:
    query = stored_select().where(
        resources.c.resource_type == resource_type, resources.c.id == resource_id
    )
    row = (await session.execute(query)).first()
    return stored(row) if row else None


async def read_many(session: AsyncSession, keys: Iterable[ResourceKey]) -> list[StoredResource]:
    wanted = sorted(set(keys))
    found: list[StoredResource] = []
    for chunk in _chunks(wanted, 2000):
        query = stored_select().where(
            tuple_(resources.c.resource_type, resources.c.id).in_(list(chunk))
        )
        found.extend(stored(r) for r in await session.execute(query))
    return found


@dataclass(frozen=True)
class Version:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    raw: str | bytes


async def vread(
    session: AsyncSession, resource_type: str, resource_id: str, version_id: int
) -> Version | None:
    current = await read(session, resource_type, resource_id)
    if current is None:
        return None
    if current.version_id == version_id:
        return Version(resource_type, resource_id, version_id, current.last_updated, current.raw)
    query = select(history.c.last_updated, cast(history.c.content, Text).label("raw")).where(
        history.c.resource_type == resource_type,
        history.c.id == resource_id,
        history.c.version_id == version_id,
    )
    row = (await session.execute(query)).first()
    if row is None:
        return None
    return Version(resource_type, resource_id, version_id, aware(row.last_updated), row.raw)


async def instance_history(
    session: AsyncSession,
    resource_type: str,
    resource_id: str,
    *,
    since: datetime | None,
    before_version: int | None,
    limit: int,
) -> list[Version]:
    """Versions newest first, from ``before_version`` down (exclusive)."""
    current = await read(session, resource_type, resource_id)
    if current is None:
        return []
    found: list[Version] = []
    if (before_version is None or current.version_id < before_version) and (
        since is None or current.last_updated >= since
    ):
        found.append(
            Version(
                resource_type, resource_id, current.version_id, current.last_updated, current.raw
            )
        )
    query = (
        select(history.c.version_id, history.c.last_updated, cast(history.c.content, Text))
        .where(history.c.resource_type == resource_type, history.c.id == resource_id)
        .order_by(history.c.version_id.desc())
        .limit(limit + 1)
    )
    if before_version is not None:
        query = query.where(history.c.version_id < before_version)
    if since is not None:
        query = query.where(history.c.last_updated >= since)
    for v, lu, raw in await session.execute(query):
        if v != current.version_id:
            found.append(Version(resource_type, resource_id, v, aware(lu), raw))
    return found[: limit + 1]


async def type_history(
    session: AsyncSession,
    resource_type: str,
    *,
    since: datetime | None,
    after: tuple[datetime, str, int] | None,
    limit: int,
) -> list[Version]:
    """Every version of every resource of a type, newest first (by lastUpdated, then id and
    version), after the keyset position ``after``."""
    parts = []
    for source in (resources, history):
        part = select(
            source.c.resource_type,
            source.c.id,
            source.c.version_id,
            source.c.last_updated,
            cast(source.c.content, Text).label("raw"),
        ).where(source.c.resource_type == resource_type)
        if since is not None:
            part = part.where(source.c.last_updated >= since)
        if after is not None:
            moment, after_id, after_version = after
            part = part.where(
                (source.c.last_updated < moment)
                | (
                    (source.c.last_updated == moment)
                    & (
                        tuple_(source.c.id, source.c.version_id)
                        > tuple_(literal(after_id), literal(after_version))
                    )
                )
            )
        part = part.order_by(source.c.last_updated.desc(), source.c.id, source.c.version_id).limit(
            limit + 1
        )
        parts.append(part)
    found: list[Version] = []
    for part in parts:
        for r in await session.execute(part):
            found.append(Version(r[0], r[1], r[2], aware(r[3]), r[4]))
    found.sort(key=lambda v: (-v.last_updated.timestamp(), v.id, v.version_id))
    return found[: limit + 1]


async def patients_of(session: AsyncSession, keys: Sequence[str]) -> list[StoredResource]:
    """The Patient resources stored under any of ``keys``."""
    query = stored_select().where(
        resources.c.resource_type == "Patient", resources.c.patient_key.in_(list(keys))
    )
    return [stored(r) for r in await session.execute(query)]


async def for_patient(
    session: AsyncSession,
    keys: Sequence[str],
    *,
    types: Sequence[str] | None = None,
    exclude_types: Sequence[str] = (),
    since: datetime | None = None,
    after: ResourceKey | None = None,
    limit: int,
) -> list[StoredResource]:
    """Resources stored under any of ``keys`` in (type, id) order, after ``after``.

    On PostgreSQL straight through asyncpg, the JSON coming back as UTF-8 bytes: this is the
    query behind ``$everything`` and the summary, a thousand resources at a time.
    """
    if _dialect(session) == "postgresql":
        conn = await _asyncpg(session)
        # one key (the usual person): an ordered scan of the patient index, no sort
        one = len(keys) == 1
        filters = (
            keys[0] if one else list(keys),
            list(types) if types is not None else None,
            list(exclude_types),
            since,
        )
        rows = await _fetch_in_halves(session, conn, one, filters, after, limit)
        return [StoredResource(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]
    query = stored_select().where(resources.c.patient_key.in_(list(keys)))
    if types is not None:
        query = query.where(resources.c.resource_type.in_(list(types)))
    if exclude_types:
        query = query.where(resources.c.resource_type.not_in(list(exclude_types)))
    if since is not None:
        query = query.where(resources.c.last_updated >= since)
    if after is not None:
        query = query.where(
            tuple_(resources.c.resource_type, resources.c.id) > tuple_(*map(literal, after))
        )
    query = query.order_by(resources.c.resource_type, resources.c.id).limit(limit)
    return [stored(r) for r in await session.execute(query)]


# A page this large is read as two halves on two connections at once: turning a thousand
# JSONB documents back into text is most of ``$everything``'s time in PostgreSQL (≈ 18 ms for
# 1.5 MB on the 2-core build machine), and one backend does it on one core.
HALVES_FROM = 400
_STORED_SQL = """resource_type, id, version_id, last_updated, patient_key, source,
       convert_to(content::text, 'UTF8'), setting"""
_PERSON_ROWS = """
FROM record.resources
WHERE patient_key {key}
  AND ($2::text[] IS NULL OR resource_type = ANY($2::text[]))
  AND NOT (resource_type = ANY($3::text[]))
  AND ($4::timestamptz IS NULL OR last_updated >= $4)
  AND ($5::text IS NULL OR (resource_type, id) > ($5, $6::text))
ORDER BY resource_type, id
"""
_ONE_KEY, _ANY_KEY = "= $1::text", "= ANY($1::text[])"


def _person_sql(columns: str, key: str, tail: str) -> str:
    return f"SELECT {columns}{_PERSON_ROWS.format(key=key)}{tail}"


_FOR_ONE_KEY_SQL = _person_sql(_STORED_SQL, _ONE_KEY, "LIMIT $7")
_FOR_PATIENT_SQL = _person_sql(_STORED_SQL, _ANY_KEY, "LIMIT $7")
# the key of the row at a given position: where the second half starts after
_NTH_OF_ONE_KEY_SQL = _person_sql("resource_type, id", _ONE_KEY, "OFFSET $7 LIMIT 1")
_NTH_OF_PATIENT_SQL = _person_sql("resource_type, id", _ANY_KEY, "OFFSET $7 LIMIT 1")


async def _fetch_in_halves(
    session: AsyncSession,
    conn: Any,
    one_key: bool,
    filters: tuple[Any, ...],
    after: ResourceKey | None,
    limit: int,
) -> list[Any]:
    """The rows of ``for_patient``: a large page as two halves read at once, the second on a
    connection of its own (only when reading in autocommit, where no transaction's snapshot has
    to be shared); a small one, or one inside a transaction, in one query."""
    rows_sql = _FOR_ONE_KEY_SQL if one_key else _FOR_PATIENT_SQL

    def fetch(connection: Any, start: ResourceKey | None, count: int) -> Any:
        return connection.fetch(
            rows_sql, *filters, start[0] if start else None, start[1] if start else None, count
        )

    engine = session.bind
    if limit < HALVES_FROM or conn.is_in_transaction() or not isinstance(engine, AsyncEngine):
        return list(await fetch(conn, after, limit))
    half = limit // 2
    middle = await conn.fetchrow(
        _NTH_OF_ONE_KEY_SQL if one_key else _NTH_OF_PATIENT_SQL,
        *filters,
        after[0] if after else None,
        after[1] if after else None,
        half - 1,
    )
    if middle is None:  # fewer rows than half a page: one query
        return list(await fetch(conn, after, limit))
    async with engine.connect() as other:
        raw = await other.get_raw_connection()
        first, second = await asyncio.gather(
            fetch(conn, after, half),
            fetch(raw.driver_connection, (middle[0], middle[1]), limit - half),
        )
    return [*first, *second]


async def all_resources(
    session: AsyncSession, after: ResourceKey | None, limit: int
) -> list[tuple[str, str, str]]:
    """(type, id, raw JSON) of every current resource in key order, for reindexing."""
    query = select(resources.c.resource_type, resources.c.id, _RAW)
    if after is not None:
        query = query.where(
            tuple_(resources.c.resource_type, resources.c.id) > tuple_(*map(literal, after))
        )
    query = query.order_by(resources.c.resource_type, resources.c.id).limit(limit)
    return [(r[0], r[1], r[2]) for r in await session.execute(query)]


async def set_hashes(session: AsyncSession, hashes: Sequence[tuple[str, str, bytes]]) -> None:
    if not hashes:
        return
    if _dialect(session) == "postgresql":
        conn = await _asyncpg(session)
        await conn.execute(_HASHES_SQL, *_columns(hashes, 3))
        return
    await session.execute(
        update(resources)
        .where(
            resources.c.resource_type == bindparam("t"),
            resources.c.id == bindparam("i"),
        )
        .values(content_hash=bindparam("h")),
        [{"t": t, "i": i, "h": h} for t, i, h in hashes],
    )


async def insert_index(session: AsyncSession, rows: IndexBatch) -> None:
    await write(session, WriteBatch(index_inserts=rows))
