"""Database access shared by the services (fhir_common.db): schemas, migrations, units of work
and upserts, on SQLite (embedded mode) and on a real PostgreSQL server (distributed mode)."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Column, MetaData, String, Table, select, text

from fhir_common.db import Database, JsonDocument, loopback_without_tls, upsert
from fhir_common.scratch import create_database, drop_database

MIGRATION = '''
"""Items and links, in whatever schema the Database migrates.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import context, op

from fhir_common.db import JsonDocument

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "items",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("doc", JsonDocument, nullable=True),
        schema=schema,
    )
    op.create_table(
        "links",
        sa.Column("a", sa.String(32), primary_key=True),
        sa.Column("b", sa.String(32), primary_key=True),
        schema=schema,
    )


def downgrade() -> None:
    schema = context.config.attributes["schema"]
    op.drop_table("links", schema=schema)
    op.drop_table("items", schema=schema)
'''

ENV = """
from sqlalchemy import MetaData

from fhir_common.db import run_migrations_online

run_migrations_online(MetaData())
"""


@pytest.fixture(scope="module")
def migrations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrations directory laid out as every service's is: env.py and versions/."""
    root = tmp_path_factory.mktemp("migrations")
    (root / "env.py").write_text(textwrap.dedent(ENV))
    (root / "versions").mkdir()
    (root / "versions" / "0001_items.py").write_text(MIGRATION)
    return root


def tables(schema: str) -> tuple[Table, Table]:
    metadata = MetaData(schema=schema)
    items = Table(
        "items",
        metadata,
        Column("id", String(32), primary_key=True),
        Column("name", String(64), nullable=False),
        Column("doc", JsonDocument, nullable=True),
    )
    links = Table(
        "links",
        metadata,
        Column("a", String(32), primary_key=True),
        Column("b", String(32), primary_key=True),
    )
    return items, links


# --- databases -----------------------------------------------------------------------------------


T = TypeVar("T")


def in_a_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run async set-up work from a sync (module-scoped) fixture, on a loop of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work()).result()


@pytest.fixture(scope="module")
def postgresql_url(database_url: str) -> Iterator[str]:
    """A database of its own on the real PostgreSQL server, dropped after this module; each
    test works in a schema of its own inside it."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    name = f"jd_test_{uuid.uuid4().hex[:10]}"
    server = url.render_as_string(hide_password=False)
    created = in_a_thread(lambda: create_database(server, name))
    try:
        yield created
    finally:
        in_a_thread(lambda: drop_database(server, name))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    url: str = request.getfixturevalue("postgresql_url")
    return url


@pytest.fixture
def schema() -> str:
    return f"s_{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def db(db_url: str, schema: str, migrations: Path) -> AsyncIterator[Database]:
    database = Database(db_url, schema)
    await database.migrate(migrations)
    try:
        yield database
    finally:
        await database.dispose()


async def rows(db: Database, table: Table) -> list[tuple[Any, ...]]:
    async with db.sessions() as session:
        result = await session.execute(select(table).order_by(*table.primary_key.columns))
        return [tuple(r) for r in result]


# --- migrations ----------------------------------------------------------------------------------


async def test_sqlite_keeps_each_schema_in_an_attached_file(
    tmp_path: Path, migrations: Path
) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'joinedup.db'}", "things")
    try:
        await database.migrate(migrations)
        await database.migrate(migrations)  # again: nothing to do
        items, _ = tables("things")
        async with database.transaction() as session:
            await upsert(session, items, [{"id": "1", "name": "one"}], ["id"])
    finally:
        await database.dispose()

    schema_file = tmp_path / "data" / "joinedup-things.db"
    assert schema_file.exists()
    with sqlite3.connect(schema_file) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"items", "links", "alembic_version"} <= names
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
        assert conn.execute("SELECT id, name FROM items").fetchall() == [("1", "one")]
    with sqlite3.connect(tmp_path / "data" / "joinedup.db") as conn:
        main = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "items" not in main


@pytest.mark.integration
async def test_postgresql_migrates_into_a_real_schema(
    postgresql_url: str, schema: str, migrations: Path
) -> None:
    database = Database(postgresql_url, schema)
    other = Database(postgresql_url, f"{schema}_other")
    try:
        await database.migrate(migrations)
        await database.migrate(migrations)  # again: nothing to do
        await other.migrate(migrations)  # another service's schema, migrated on its own
        async with database.sessions() as session:
            found = await session.execute(
                text(
                    "SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_schema LIKE :prefix ORDER BY 1, 2"
                ),
                {"prefix": f"{schema}%"},
            )
            assert [tuple(r) for r in found] == [
                (schema, "alembic_version"),
                (schema, "items"),
                (schema, "links"),
                (f"{schema}_other", "alembic_version"),
                (f"{schema}_other", "items"),
                (f"{schema}_other", "links"),
            ]
            version = await session.execute(
                text(f'SELECT version_num FROM "{schema}".alembic_version')
            )
            assert version.scalar_one() == "0001"
            doc_type = await session.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_schema = :schema AND table_name = 'items' AND column_name = 'doc'"
                ),
                {"schema": schema},
            )
            assert doc_type.scalar_one() == "jsonb"
            public = await session.execute(
                text("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
            )
            assert public.scalar_one() == 0
    finally:
        await database.dispose()
        await other.dispose()


# --- units of work -------------------------------------------------------------------------------


async def test_a_transaction_commits_when_its_block_succeeds(db: Database, schema: str) -> None:
    items, _ = tables(schema)
    async with db.transaction() as session:
        await upsert(session, items, [{"id": "1", "name": "one"}], ["id"])
    assert await rows(db, items) == [("1", "one", None)]


async def test_a_transaction_rolls_back_when_its_block_raises(db: Database, schema: str) -> None:
    items, _ = tables(schema)
    async with db.transaction() as session:
        await upsert(session, items, [{"id": "1", "name": "one"}], ["id"])

    class BoomError(Exception):
        pass

    async def fail_midway() -> None:
        async with db.transaction() as session:
            await upsert(session, items, [{"id": "1", "name": "changed"}], ["id"])
            await upsert(session, items, [{"id": "2", "name": "two"}], ["id"])
            raise BoomError

    with pytest.raises(BoomError):
        await fail_midway()
    assert await rows(db, items) == [("1", "one", None)]


async def test_ping(db: Database) -> None:
    await db.ping()


# --- upsert --------------------------------------------------------------------------------------


async def test_upsert_inserts_then_updates(db: Database, schema: str) -> None:
    items, _ = tables(schema)
    doc = {"resourceType": "Patient", "name": [{"family": "Chalmers"}], "active": True}
    async with db.transaction() as session:
        await upsert(
            session,
            items,
            [{"id": "1", "name": "one", "doc": doc}, {"id": "2", "name": "two", "doc": None}],
            ["id"],
        )
    async with db.transaction() as session:
        await upsert(
            session,
            items,
            [
                {"id": "2", "name": "TWO", "doc": {"n": 2}},
                {"id": "3", "name": "three", "doc": None},
            ],
            ["id"],
        )
    assert await rows(db, items) == [
        ("1", "one", doc),
        ("2", "TWO", {"n": 2}),
        ("3", "three", None),
    ]


async def test_upsert_counts_a_repeated_key_once_the_last_given(db: Database, schema: str) -> None:
    """One statement may not touch a row twice: repeats are folded (the last wins), through a
    Core connection as through a session, however many rows (more than one statement's)."""
    items, _ = tables(schema)
    many = [{"id": f"{n:05d}", "name": "first", "doc": None} for n in range(2500)]
    again = [{"id": f"{n:05d}", "name": "last", "doc": None} for n in range(0, 2500, 2)]
    async with db.engine.begin() as connection:
        await upsert(connection, items, [*many, *again], ["id"])
    stored = await rows(db, items)
    assert len(stored) == 2500
    assert {name for id_, name, _ in stored if int(id_) % 2 == 0} == {"last"}
    assert {name for id_, name, _ in stored if int(id_) % 2 == 1} == {"first"}


@pytest.mark.integration
async def test_upserts_of_the_same_rows_in_opposite_orders_do_not_deadlock(
    postgresql_url: str, schema: str, migrations: Path
) -> None:
    """A consumer and a publisher keep the same directory: one transaction holds row a and
    then wants b, while the other upserts [b, a]. Written in the order given, the second would
    lock b, then wait for a: a deadlock, and PostgreSQL aborts one of them. In key order it
    waits for a before it takes b, and both commit."""
    db = Database(postgresql_url, schema)
    await db.migrate(migrations)
    items, _ = tables(schema)
    a, b = {"id": "a", "name": "a0", "doc": None}, {"id": "b", "name": "b0", "doc": None}
    try:
        async with db.transaction() as session:
            await upsert(session, items, [a, b], ["id"])
        first_has_a = asyncio.Event()

        async def first() -> None:
            async with db.transaction() as session:
                await upsert(session, items, [{**a, "name": "a1"}], ["id"])
                first_has_a.set()
                await asyncio.sleep(0.5)  # the second is now waiting, for a (or holding b)
                await upsert(session, items, [{**b, "name": "b1"}], ["id"])

        async def second() -> None:
            await first_has_a.wait()
            async with db.transaction() as session:
                await upsert(session, items, [{**b, "name": "b2"}, {**a, "name": "a2"}], ["id"])

        await asyncio.wait_for(asyncio.gather(first(), second()), 30)
        assert await rows(db, items) == [("a", "a2", None), ("b", "b2", None)]
    finally:
        await db.dispose()


async def test_upsert_of_nothing_does_nothing(db: Database, schema: str) -> None:
    items, _ = tables(schema)
    async with db.transaction() as session:
        await upsert(session, items, [], ["id"])
    assert await rows(db, items) == []


async def test_upsert_into_a_table_of_keys_only(db: Database, schema: str) -> None:
    """A link table has nothing but its key: upserting a row that is there already must
    leave it as it is (ON CONFLICT DO NOTHING), not fail."""
    _, links = tables(schema)
    for _ in range(2):
        async with db.transaction() as session:
            await upsert(session, links, [{"a": "x", "b": "y"}], ["a", "b"])
    assert await rows(db, links) == [("x", "y")]


# --- TLS on loopback -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql+asyncpg://u:p@127.0.0.1:5432/db",
            "postgresql+asyncpg://u:p@127.0.0.1:5432/db?ssl=disable",
        ),
        (
            "postgresql+asyncpg://u:p@localhost/db",
            "postgresql+asyncpg://u:p@localhost/db?ssl=disable",
        ),
        # what the URL says stands; a server elsewhere is left to negotiate
        (
            "postgresql+asyncpg://u:p@127.0.0.1/db?ssl=require",
            "postgresql+asyncpg://u:p@127.0.0.1/db?ssl=require",
        ),
        (
            "postgresql+asyncpg://u:p@localhost/db?sslmode=verify-full",
            "postgresql+asyncpg://u:p@localhost/db?sslmode=verify-full",
        ),
        (
            "postgresql+asyncpg://u:p@db.nhs.example/db",
            "postgresql+asyncpg://u:p@db.nhs.example/db",
        ),
        # another driver has other parameters: left alone
        ("postgresql+psycopg://u:p@127.0.0.1/db", "postgresql+psycopg://u:p@127.0.0.1/db"),
    ],
)
def test_tls_is_off_only_for_a_server_on_loopback_that_the_url_says_nothing_about(
    given: str, expected: str
) -> None:
    assert loopback_without_tls(given) == expected


@pytest.mark.integration
async def test_a_loopback_connection_is_not_encrypted(postgresql_url: str) -> None:
    database = Database(postgresql_url, "public")
    try:
        async with database.engine.connect() as connection:
            encrypted = await connection.scalar(
                text("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            )
    finally:
        await database.dispose()
    assert encrypted is False
