"""Databases of their own on a PostgreSQL server, for tests and benchmarks: created, then
dropped however they ended.

``DROP DATABASE … WITH (FORCE)`` ends the sessions still connected, but not an autovacuum
worker that happens to be in the database: PostgreSQL refuses a non-superuser the right to end
it ("must be a member of the role whose process is being terminated"). Such a worker finishes
within seconds, so the drop is tried again for up to a minute.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.engine import make_url
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

DROP_PATIENCE = 60.0  # seconds


def _admin_dsn(server_url: str) -> str:
    """The asyncpg DSN of ``server_url`` (a SQLAlchemy URL), on its own database."""
    return make_url(server_url).set(drivername="postgresql").render_as_string(False)


def database_url(server_url: str, name: str) -> str:
    """``server_url`` (a SQLAlchemy URL) pointed at database ``name``."""
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def _execute(server_url: str, sql: str) -> None:
    connection = await asyncpg.connect(_admin_dsn(server_url))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``server_url``; its SQLAlchemy URL."""
    await _execute(server_url, f'CREATE DATABASE "{name}"')
    return database_url(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, ending its sessions; waits out an autovacuum worker in it."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(
            (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError)
        ),
        stop=stop_after_delay(DROP_PATIENCE),
        wait=wait_fixed(0.5),
        reraise=True,
    ):
        with attempt:
            await _execute(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A new database named ``<prefix>_<random>``: its SQLAlchemy URL, dropped on the way out."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    url = await create_database(server_url, name)
    try:
        yield url
    finally:
        await drop_database(server_url, name)
