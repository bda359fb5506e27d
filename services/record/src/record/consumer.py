"""The record's consumer: every ``fhir.<Type>`` topic into the database, then ``record.changes``.

One batch is the unit the bus commits offsets for: the handler returns only when everything in
it is committed in PostgreSQL, versions, index rows, person links and its changes (in the
outbox). The changes are published right after the commit; if that fails (or the process dies
first) the outbox keeps them and the relay publishes them later. A batch redelivered after a
crash finds its resources unchanged and stores nothing twice.

A batch is split by topic partition into ``record_parallel`` parts stored concurrently, each in a
transaction of its own, so that one part is parsed and indexed while another waits for the
database: one patient's messages stay in one part, in order. Each part stores the positions it
reached (``consumer_positions``) with its data, so if a part fails and the bus delivers the whole
batch again, the parts already committed are recognised message by message and skipped.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence

import asyncpg
import sqlalchemy.exc

from fhir_common.bus import InProcessBus, PermanentError
from fhir_common.bus.base import is_permanent
from fhir_common.db import Database
from fhir_common.events import Message
from fhir_common.service import ServiceContext
from record import versioning
from record.outbox import Relay
from record.settings import RecordSettings

GROUP = "record"
DATA_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.DataError,
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ProgramLimitExceededError,
)


def split(messages: Sequence[Message], parts: int) -> list[list[Message]]:
    """``messages`` in at most ``parts`` lists, each topic partition's messages (so each key's)
    together and in order: a part then owns the positions it stores."""
    if parts <= 1 or len(messages) < 2 * parts:
        return [list(messages)]
    found: list[list[Message]] = [[] for _ in range(parts)]
    for message in messages:
        where = (
            f"{message.topic}/{message.partition}" if message.partition is not None else message.key
        )
        found[zlib.crc32(where.encode()) % parts].append(message)
    return [part for part in found if part]


def parallelism(settings: RecordSettings, db: Database) -> int:
    return settings.record_parallel or (1 if db.is_sqlite else 2)


def register(ctx: ServiceContext, settings: RecordSettings, relay: Relay) -> None:
    assert ctx.db is not None
    db = ctx.db
    topic = settings.record_changes_topic
    parts = parallelism(settings, db)
    # Kafka's log outlives the process, so a batch can come again after its data was committed:
    # positions recognise it. The in-process log starts afresh with the process: no positions.
    durable = not isinstance(ctx.bus, InProcessBus)

    async def store_part(messages: Sequence[Message]) -> None:
        try:
            async with db.transaction() as session:
                applied = await versioning.apply(
                    session, messages, changes_topic=topic, positions=durable
                )
        except DATA_ERRORS as error:
            # the database refuses a value (a NUL in a string, an index entry too long): bad
            # data, so the bus replays the batch message by message and dead-letters the culprit
            raise PermanentError(f"the database refused the data: {error}") from error
        if applied.outbox_id is not None:
            await relay.published(applied.outbox_id, applied.messages)

    async def store(messages: Sequence[Message]) -> None:
        chunks = split(messages, parts)
        if len(chunks) == 1:
            await store_part(chunks[0])
            return
        outcomes = await asyncio.gather(*(store_part(c) for c in chunks), return_exceptions=True)
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        if errors:
            # bad data wins: the bus then replays the batch message by message
            raise next((e for e in errors if is_permanent(e)), errors[0])

    ctx.bus.subscribe(
        GROUP,
        store,
        service=ctx.name,
        pattern=settings.record_topic_pattern,
        max_batch=settings.record_consumer_batch,
    )
