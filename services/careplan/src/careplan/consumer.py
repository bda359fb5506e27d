"""The careplan service's consumer of ``record.changes``.

For now it takes each change in and counts it; the careplan issue adds what it does with them.
"""

from __future__ import annotations

from collections.abc import Sequence

from fhir_common.events import RECORD_CHANGES, Message, RecordChange
from fhir_common.observability import CHANGES_SEEN
from fhir_common.service import ServiceContext

GROUP = "careplan"


def register(ctx: ServiceContext) -> None:
    async def take_in(messages: Sequence[Message]) -> None:
        for message in messages:
            change = RecordChange.of(message)
            CHANGES_SEEN.labels(ctx.name, change.resource_type).inc()

    ctx.bus.subscribe(GROUP, take_in, service=ctx.name, topics=[RECORD_CHANGES])
