"""``record.changes`` through the transactional outbox (record.outbox): changes committed with
the data are published even when publishing fails right after the commit (the relay picks them
up), and a change published twice is recognisably the same message."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select

from fhir_common.db import Database
from fhir_common.events import RECORD_CHANGES, Message, event_headers
from record import outbox
from record.tables import SCHEMA
from record.tables import outbox as outbox_table

NHS_NUMBER = "9434765919"


async def outbox_rows(db_url: str) -> int:
    database = Database(db_url, SCHEMA)
    try:
        async with database.sessions() as session:
            count = select(func.count()).select_from(outbox_table)
            return int((await session.execute(count)).scalar_one())
    finally:
        await database.dispose()


async def eventually(check: Any, seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not so after {seconds} s")


def failing_changes(record: Any, times: int) -> list[int]:
    """Make publishing to record.changes fail ``times`` times (a broker away, a crash)."""
    real = record.bus.publish
    failures = [0]

    async def publish(messages: Sequence[Message]) -> None:
        if failures[0] < times and any(m.topic == RECORD_CHANGES for m in messages):
            failures[0] += 1
            raise ConnectionError("broker away")
        await real(messages)

    record.bus.publish = publish
    return failures


class Collecting:
    """A bus that only collects what is published."""

    def __init__(self) -> None:
        self.published: list[Message] = []

    async def publish(self, messages: Sequence[Message]) -> None:
        self.published.extend(messages)


async def test_changes_are_published_and_the_outbox_emptied(record: Any, kit: Any) -> None:
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    assert len(record.changes) == 1
    assert await outbox_rows(record.db_url) == 0


async def test_a_failed_publish_is_retried_by_the_relay(
    tmp_path: Path, db_url: str, start_record: Any, kit: Any
) -> None:
    # A grace period far longer than the test: the relay's own loop leaves the row alone however
    # slow the machine, and the retry happens when the test says so (``flush``, what the loop
    # runs on each beat, told that the row is old enough).
    async with start_record(tmp_path, db_url, outbox_grace=60) as record:
        failures = failing_changes(record, times=1)
        change = kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER)
        await record.publish(change)
        assert failures[0] == 1
        assert record.changes == []  # not yet: the publish after the commit failed
        assert await outbox_rows(record.db_url) == 1  # but the change is kept, committed
        assert await record.relay.flush() == 0  # within the grace period: not left behind yet
        assert await outbox_rows(record.db_url) == 1

        # past the grace period the relay publishes it, once, and deletes the row
        assert await record.relay.flush(older_than=0) == 1
        async with asyncio.timeout(20):
            await record.bus.wait_idle()
        assert failures[0] == 1  # the bus took it this time
        assert len(record.changes) == 1
        assert orjson.loads(record.changes[0].value)["versionId"] == "1"
        assert await outbox_rows(record.db_url) == 0
        assert await record.relay.flush(older_than=0) == 0  # nothing left to publish again

        # the resource itself was stored once, and a resend changes nothing
        await record.publish(change)
        assert await record.relay.flush(older_than=0) == 0
        async with asyncio.timeout(20):
            await record.bus.wait_idle()
        assert len(record.changes) == 1


async def test_changes_left_by_a_crash_are_published_at_the_next_start(
    db: Database, kit: Any
) -> None:
    """Committed, then the process died before publishing: the row is all there is."""
    applied = await kit.apply(db, kit.message(kit.gp_patient()))
    assert applied.outbox_id is not None
    bus = Collecting()
    relay = outbox.Relay(db, bus, grace=0, poll=0.05)  # type: ignore[arg-type]
    assert await relay.flush() == 1
    assert [(m.key, m.value, dict(m.headers)) for m in bus.published] == [
        (m.key, m.value, dict(m.headers)) for m in applied.messages
    ]
    assert await relay.flush() == 0  # deleted once published


async def test_a_twice_published_change_is_recognisably_the_same(db: Database, kit: Any) -> None:
    """Published, then the process died before deleting the row: it is published again, with
    the same value, key and event-id, so consumers can drop it by (resourceType, id,
    versionId) — or by event-id."""
    applied = await kit.apply(db, kit.message(kit.gp_patient()))
    assert applied.outbox_id is not None
    first = list(applied.messages)  # what the consumer published right after the commit
    bus = Collecting()
    relay = outbox.Relay(db, bus, grace=0, poll=0.05)  # type: ignore[arg-type]
    await relay.flush()  # the row was not deleted: published again
    again = bus.published[0]
    assert (again.key, again.value) == (first[0].key, first[0].value)
    assert again.headers["event-id"] == first[0].headers["event-id"]
    value = orjson.loads(again.value)
    assert (value["resourceType"], value["id"], value["versionId"]) == ("Patient", "example", "1")


async def test_the_relay_loop_survives_a_bus_that_is_not_there(db: Database, kit: Any) -> None:
    await kit.apply(db, kit.message(kit.gp_patient()))
    calls = [0]

    class Away:
        async def publish(self, messages: Sequence[Message]) -> None:
            calls[0] += 1
            raise RuntimeError("Kafka bus not started")

    relay = outbox.Relay(db, Away(), grace=0, poll=0.05)  # type: ignore[arg-type]
    relay.start()

    async def tried_again() -> bool:
        return calls[0] >= 2

    try:
        await eventually(tried_again)  # tried again and again, never died
    finally:
        await relay.stop()
    async with db.sessions() as session:
        count = select(func.count()).select_from(outbox_table)
        assert (await session.execute(count)).scalar() == 1


@pytest.mark.parametrize("count", [1, 3])
async def test_serialise_round_trip(count: int) -> None:
    messages = [
        Message(
            topic=RECORD_CHANGES,
            key=f"k{n}",
            value=orjson.dumps({"n": n, "text": "é\u2028"}),
            headers=event_headers(source="s", setting="acute"),
        )
        for n in range(count)
    ]
    back = outbox.deserialise(outbox.serialise(messages))
    assert [(m.topic, m.key, m.value, dict(m.headers)) for m in back] == [
        (m.topic, m.key, m.value, dict(m.headers)) for m in messages
    ]
