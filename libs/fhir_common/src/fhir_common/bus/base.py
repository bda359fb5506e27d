"""The bus interface both implementations honour, and the delivery rules they share.

Semantics (the same for Kafka and in-process):

* ``publish`` is atomic: all the messages of one call become visible together or none do.
* Messages with the same key go to the same partition, so they are handled in order.
* Each consumer group sees every message at least once; members of one group share partitions.
* A handler receives a batch and its offsets are committed only after it returns.
* A handler that raises a *permanent* error (bad data) has the batch replayed message by
  message; each message that still fails permanently goes to the dead-letter topic with the
  error, and consumption goes on. Any other error is *transient* (database down, broker
  away): the batch is retried with back-off and nothing is committed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from fhir_common.events import DEADLETTER, Header, Message, now_iso
from fhir_common.observability import MESSAGES_HANDLED, current_traceparent

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Message]], Awaitable[None]]


class PermanentError(Exception):
    """This message can never be processed as it is: dead-letter it and move on."""


# Data errors are permanent; anything else (I/O, database, broker) is worth retrying.
_PERMANENT_TYPES: tuple[type[BaseException], ...] = (
    PermanentError,
    orjson.JSONDecodeError,
    ValueError,
    KeyError,
    TypeError,
    UnicodeDecodeError,
)


def is_permanent(error: BaseException) -> bool:
    return isinstance(error, _PERMANENT_TYPES)


@dataclass(frozen=True)
class Subscription:
    group: str
    handler: BatchHandler
    service: str
    topics: tuple[str, ...] = ()
    pattern: str | None = None
    max_batch: int = 500

    def __post_init__(self) -> None:
        if bool(self.topics) == bool(self.pattern):
            raise ValueError("subscribe to explicit topics or to a pattern, not both or neither")

    def matches(self, topic: str) -> bool:
        if self.pattern is not None:
            return re.fullmatch(self.pattern, topic) is not None
        return topic in self.topics


class Bus(ABC):
    def __init__(self) -> None:
        self.subscriptions: list[Subscription] = []

    def subscribe(
        self,
        group: str,
        handler: BatchHandler,
        *,
        service: str,
        topics: Sequence[str] = (),
        pattern: str | None = None,
        max_batch: int = 500,
    ) -> None:
        """Register a consumer; it runs from ``start`` (or at once if already started)."""
        subscription = Subscription(group, handler, service, tuple(topics), pattern, max_batch)
        self.subscriptions.append(subscription)
        self._on_subscribe(subscription)

    def _on_subscribe(self, subscription: Subscription) -> None:  # noqa: B027 - optional hook
        """Implementations that are already running start the new consumer here."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None:
        """Finish the batches in hand, commit, and stop consuming and publishing."""

    @abstractmethod
    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish all of ``messages`` atomically (all or none)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise if the bus cannot be reached (used by ``/ready``)."""

    async def dead_letter(
        self,
        *,
        value: bytes,
        source: str,
        error: str,
        service: str,
        origin: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Keep the original bytes with why they failed and where they came from."""
        dl_headers = dict(headers or {})
        dl_headers.update(
            {
                Header.ERROR: error[:4000],
                Header.SERVICE: service,
                Header.ORIGIN: origin,
                Header.SOURCE: source,
                Header.OCCURRED_AT: dl_headers.get(Header.OCCURRED_AT, now_iso()),
            }
        )
        await self.publish([Message(topic=DEADLETTER, key=source, value=value, headers=dl_headers)])
        log.warning("dead-lettered message", extra={"origin": origin, "error": error[:500]})


async def deliver(
    bus: Bus, subscription: Subscription, batch: Sequence[Message], stopping: asyncio.Event
) -> None:
    """Hand ``batch`` to the handler until it succeeds, isolating and dead-lettering bad data.

    Returns when every message is either handled or dead-lettered; raises CancelledError only.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: not is_permanent(e) and not stopping.is_set()),
        wait=wait_exponential_jitter(initial=0.2, max=15),
        reraise=True,
        before_sleep=lambda state: log.warning(
            "consumer batch failed, retrying",
            extra={"group": subscription.group, "error": repr(state.outcome.exception())}
            if state.outcome
            else {},
        ),
    )
    try:
        async for attempt in retrying:
            with attempt:
                await _call(subscription, batch)
        MESSAGES_HANDLED.labels(subscription.group, "ok").inc(len(batch))
    except Exception as error:
        if not is_permanent(error):
            raise
        if len(batch) == 1:
            await _dead_letter(bus, subscription, batch[0], error)
            return
        # Replay one by one so that only the bad messages are dead-lettered.
        for message in batch:
            await deliver(bus, subscription, [message], stopping)


async def _dead_letter(
    bus: Bus, subscription: Subscription, message: Message, error: BaseException
) -> None:
    await bus.dead_letter(
        value=message.value,
        source=message.headers.get(Header.SOURCE, message.key),
        error=f"{type(error).__name__}: {error}",
        service=subscription.service,
        origin=message.origin,
        headers=message.headers,
    )
    MESSAGES_HANDLED.labels(subscription.group, "dead-lettered").inc()


async def _call(subscription: Subscription, batch: Sequence[Message]) -> None:
    # A lone message carries its trace into the handler's logs and onward publications.
    token = current_traceparent.set(batch[0].headers.get(Header.TRACEPARENT)) if batch else None
    try:
        await subscription.handler(batch)
    finally:
        if token is not None:
            current_traceparent.reset(token)
