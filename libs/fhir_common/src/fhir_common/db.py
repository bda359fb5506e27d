"""Database access shared by the services: async engines, schemas, sessions, migrations.

Each service that owns tables owns one schema. On PostgreSQL that is a real schema; on SQLite
(embedded mode) each schema is a separate database file ATTACHed under the schema's name, so
the same ``Table(..., schema="record")`` and the same Alembic migrations serve both.

Repositories never commit: the unit of work (one request, one batch of messages) does, via
``Database.transaction()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Table, event, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

# JSONB on PostgreSQL (indexable, compact), JSON text on SQLite.
JsonDocument = JSON().with_variant(JSONB(), "postgresql")


class Database:
    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.engine = _create_engine(url, schema)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed if the block succeeds, rolled back if it raises."""
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()

    async def migrate(self, migrations_dir: Path) -> None:
        """Bring this service's schema to the newest Alembic revision."""
        async with self.engine.begin() as conn:
            if not self.is_sqlite:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(_upgrade, migrations_dir, self.schema)


def _upgrade(sync_conn: Any, migrations_dir: Path, schema: str) -> None:
    # Imported here: Alembic costs over a second of every process start otherwise.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["connection"] = sync_conn
    config.attributes["schema"] = schema
    command.upgrade(config, "head")


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def loopback_without_tls(url: str) -> str:
    """``url`` with TLS turned off when it is an asyncpg URL of a server on this machine and
    does not say (asyncpg would otherwise negotiate it: it protects nothing on loopback and
    costs CPU on both sides, ~10 ms per megabyte read); as given otherwise."""
    parsed = make_url(url)
    on_loopback = parsed.get_driver_name() == "asyncpg" and parsed.host in LOOPBACK_HOSTS
    if on_loopback and not {"ssl", "sslmode"} & set(parsed.query):
        parsed = parsed.update_query_dict({"ssl": "disable"})
    return parsed.render_as_string(hide_password=False)


def _create_engine(url: str, schema: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_async_engine(
            loopback_without_tls(url), pool_size=10, max_overflow=10, pool_pre_ping=True
        )
    database = parsed.database or ""
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    schema_file = (
        str(Path(database).with_name(f"{Path(database).stem}-{schema}.db"))
        if database and database != ":memory:"
        else ":memory:"
    )
    engine = create_async_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine.sync_engine, "connect")
    def _attach_schema(dbapi_connection: Any, _: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"ATTACH DATABASE '{schema_file}' AS \"{schema}\"")
        cursor.execute(f'PRAGMA "{schema}".journal_mode=WAL')
        cursor.close()

    return engine


def run_migrations_online(target_metadata: Any) -> None:
    """The body of every service's ``migrations/env.py``.

    The connection and schema come from ``Database.migrate``; Alembic's version table lives in
    the service's own schema so services migrate independently.
    """
    from alembic import context

    connection = context.config.attributes["connection"]
    schema = context.config.attributes["schema"]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table_schema=schema,
        include_schemas=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


UPSERT_CHUNK = 1000  # rows per INSERT statement


async def upsert(
    executor: AsyncSession | AsyncConnection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE, on PostgreSQL and SQLite alike, through a
    session or a Core connection.

    Rows with the same key count once, the last one given (as if written one after another; a
    single statement may not touch a row twice). They are written in key order: two
    transactions that upsert overlapping rows (a consumer and a publisher keeping the same
    directory) then lock them in the same order and wait for each other instead of deadlocking.
    """
    if not rows:
        return
    latest = {tuple(row[k] for k in keys): row for row in rows}
    ordered = [latest[key] for key in sorted(latest)]
    insert_for = sqlite_insert if _dialect_name(executor) == "sqlite" else postgresql_insert
    statement = insert_for(table)
    updates = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keys}
    if updates:
        write = statement.on_conflict_do_update(index_elements=list(keys), set_=updates)
    else:  # nothing but the key: a row that is there already is already right
        write = statement.on_conflict_do_nothing(index_elements=list(keys))
    for start in range(0, len(ordered), UPSERT_CHUNK):
        await executor.execute(write, ordered[start : start + UPSERT_CHUNK])


def _dialect_name(executor: AsyncSession | AsyncConnection) -> str:
    if isinstance(executor, AsyncConnection):
        return executor.dialect.name
    return executor.bind.dialect.name if executor.bind else "postgresql"
