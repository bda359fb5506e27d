"""The record's consumer: every ``fhir.<Type>`` topic into the database, then ``record.changes``.

One batch is one unit of work. Offsets are committed by the bus only after this returns, i.e.
after the database commit. The changes are published after the commit; a crash in between is
covered by redelivery (the batch is re-applied, finds nothing changed, and publishes nothing),
which can lose a change notification — the transactional outbox of the record issue closes that.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from fhir_common.events import FHIR_TOPIC_PATTERN, RECORD_CHANGES, Header, Message, event_headers
from fhir_common.observability import child_traceparent
from fhir_common.service import ServiceContext
from record import versioning

GROUP = "record"


def change_message(change: versioning.Change) -> Message:
    cause = change.cause
    headers = event_headers(
        source=cause.get(Header.SOURCE, "record"),
        setting=cause.get(Header.SETTING, ""),
        occurred_at=cause.get(Header.OCCURRED_AT),
        traceparent=child_traceparent(cause.get(Header.TRACEPARENT)),
    )
    return Message(
        topic=RECORD_CHANGES,
        key=change.patient_key or f"{change.resource_type}/{change.id}",
        value=orjson.dumps(change.to_json()),
        headers=headers,
    )


def register(ctx: ServiceContext, max_batch: int) -> None:
    assert ctx.db is not None
    db = ctx.db

    async def store(messages: Sequence[Message]) -> None:
        async with db.transaction() as session:
            changes = await versioning.apply(session, messages)
        await ctx.bus.publish([change_message(c) for c in changes])

    ctx.bus.subscribe(
        GROUP, store, service=ctx.name, pattern=FHIR_TOPIC_PATTERN, max_batch=max_batch
    )
