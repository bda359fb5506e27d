"""``record.changes`` through a transactional outbox.

The changes of a batch are written to ``outbox`` (one row per batch) in the same transaction as
the data, so they are committed together or not at all. After the commit the consumer publishes
them at once and deletes the row; should it crash (or the bus refuse) in between, the row stays,
and the relay publishes it later: rows older than ``grace`` seconds are taken to be left behind
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so replicas never publish the same row together).

So nothing committed is lost. A crash after publishing and before deleting publishes a batch
twice: consumers recognise a duplicate by ``(resourceType, id, versionId)`` — each version is
announced with the same values, headers (``event-id`` included) and key every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import delete, select

from fhir_common.bus import Bus
from fhir_common.bus.base import wait_or_stop
from fhir_common.db import Database
from fhir_common.events import Header, Message, now_iso
from record.tables import outbox

if TYPE_CHECKING:
    from record.versioning import Change

log = logging.getLogger(__name__)

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-([0-9a-f]{2})$")


def change_messages(changes: Sequence[Change], topic: str) -> list[Message]:
    """The ``record.changes`` messages of a batch's changes, with DESIGN.md's headers: a new
    event id, the source, setting and time of the message that caused the change, and its trace
    continued in a new span. (``event_headers`` made in bulk: one draw of randomness per batch.)
    """
    randomness = os.urandom(24 * len(changes)).hex()
    now = now_iso()
    traces: dict[str | None, tuple[str, str] | None] = {}
    found: list[Message] = []
    for n, change in enumerate(changes):
        r = randomness[48 * n : 48 * n + 48]
        variant = "89ab"[int(r[16], 16) & 3]
        event_id = f"{r[:8]}-{r[8:12]}-4{r[13:16]}-{variant}{r[17:20]}-{r[20:32]}"
        cause = change.cause
        parent = cause.get(Header.TRACEPARENT)
        if parent not in traces:
            match = _TRACEPARENT.match(parent or "")
            usable = match is not None and match.group(1) != "0" * 32
            traces[parent] = (match.group(1), match.group(2)) if match and usable else None
        trace = traces[parent] or (secrets.token_hex(16), "01")
        headers = {
            Header.EVENT_ID: event_id,
            Header.SOURCE: cause.get(Header.SOURCE, "record"),
            Header.SETTING: cause.get(Header.SETTING, ""),
            Header.OCCURRED_AT: cause.get(Header.OCCURRED_AT) or now,
            Header.TRACEPARENT: f"00-{trace[0]}-{r[32:48]}-{trace[1]}",
        }
        found.append(
            Message(
                topic=topic,
                key=change.patient_key or f"{change.resource_type}/{change.id}",
                value=orjson.dumps(change.to_json()),
                headers=headers,
            )
        )
    return found


def change_message(change: Change, topic: str) -> Message:
    return change_messages([change], topic)[0]


def serialise(messages: Sequence[Message]) -> bytes:
    return orjson.dumps(
        [[m.topic, m.key, orjson.Fragment(m.value), dict(m.headers)] for m in messages]
    )


def deserialise(blob: bytes) -> list[Message]:
    return [
        Message(topic=topic, key=key, value=orjson.dumps(value), headers=headers)
        for topic, key, value, headers in orjson.loads(blob)
    ]


class Relay:
    """Publishes committed changes: at once after each batch, and later whatever was left."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        *,
        grace: float,
        poll: float,
        chores: Sequence[Callable[[], Awaitable[object]]] = (),
    ) -> None:
        self.db = db
        self.bus = bus
        self.grace = grace
        self.poll = poll
        self.chores = list(chores)  # other periodic work of the record, run on the same beat
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def published(self, outbox_id: int, messages: Sequence[Message]) -> bool:
        """Publish a batch's changes now and delete its outbox row; False (the row stays for
        the relay) when the bus refused them."""
        try:
            await self.bus.publish(messages)
        except Exception as error:
            log.warning(
                "record.changes not published; the outbox keeps them",
                extra={"outbox_id": outbox_id, "error": repr(error)},
            )
            return False
        try:
            async with self.db.transaction() as session:
                await session.execute(delete(outbox).where(outbox.c.id == outbox_id))
        except Exception as error:  # published: at worst the relay publishes them again
            log.warning(
                "published changes not cleared from the outbox",
                extra={"outbox_id": outbox_id, "error": repr(error)},
            )
        return True

    async def flush(self, older_than: float | None = None, limit: int = 50) -> int:
        """Publish outbox rows older than ``older_than`` seconds (default: the grace period),
        oldest first; returns how many batches were published."""
        age = self.grace if older_than is None else older_than
        cutoff = datetime.now(UTC) - timedelta(seconds=age)
        published = 0
        while True:
            async with self.db.transaction() as session:
                query = (
                    select(outbox.c.id, outbox.c.messages)
                    .where(outbox.c.created_at <= cutoff)
                    .order_by(outbox.c.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                rows = (await session.execute(query)).all()
                for row_id, blob in rows:
                    await self.bus.publish(deserialise(blob))
                    await session.execute(delete(outbox).where(outbox.c.id == row_id))
                    published += 1
            if len(rows) < limit:
                return published

    def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="record-outbox-relay")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not await wait_or_stop(self._stopping, self.poll):
            try:
                found = await self.flush()
            except Exception as error:  # the bus not started yet, the database away: later
                log.info("outbox relay will try again", extra={"error": repr(error)})
                continue
            if found:
                log.warning("outbox relay published changes left behind", extra={"batches": found})
            for chore in self.chores:
                try:
                    await chore()
                except Exception as error:
                    log.info("periodic work will try again", extra={"error": repr(error)})
