"""Keeping what was refused, as it was sent, on the dead-letter topic (DESIGN.md "Topics")."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from fhir_common.events import DEADLETTER, Header, Message, now_iso
from fhir_common.feeds import Feed
from fhir_common.service import ServiceContext

log = logging.getLogger(__name__)


async def keep(
    ctx: ServiceContext, feed: Feed, refused: Sequence[tuple[bytes, str]], origin: str
) -> None:
    """Dead-letter every (original bytes, error) in one publication."""
    if not refused:
        return
    at = now_iso()
    messages = [
        Message(
            topic=DEADLETTER,
            key=feed.id,
            value=value,
            headers={
                Header.ERROR: error[:4000],
                Header.SERVICE: ctx.name,
                Header.ORIGIN: origin,
                Header.SOURCE: feed.id,
                Header.OCCURRED_AT: at,
            },
        )
        for value, error in refused
    ]
    await ctx.bus.publish(messages)
    log.warning("dead-lettered refused input", extra={"origin": origin, "count": len(messages)})
