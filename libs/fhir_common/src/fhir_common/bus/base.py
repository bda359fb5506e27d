"""The bus interface both implementations honour, and the delivery rules they share.

Semantics (the same for Kafka and in-process):

* ``publish`` is atomic: all the messages of one call become visible together or none do.
  Malformed messages (bad topic name, non-bytes value, non-string key or header) are refused
  before anything is sent.
* Messages with the same key go to the same partition, so they are handled in order.
* Each consumer group sees every message at least once; members of one group share partitions.
* A handler receives a batch and its offsets are committed only after it returns.
* A handler that raises a *permanent* error (bad data) has the batch replayed message by
  message; each message that still fails permanently goes to the dead-letter topic with the
  error, and consumption goes on. Any other error is *transient* (database down, broker
  away): the batch is retried with back-off and nothing is committed meanwhile.
* ``stop`` lets the batch in hand finish; a batch that is still failing when ``stop`` is
  called is abandoned uncommitted (so it is delivered again) instead of waiting out back-off.
* A handler given a batch whose messages share one ``traceparent`` (in particular a batch of
  one) runs with ``current_traceparent`` set to it; for a mixed batch it is ``None``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import orjson

from fhir_common.events import DEADLETTER, Header, Message, now_iso
from fhir_common.observability import MESSAGES_HANDLED, current_traceparent

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence[Message]], Awaitable[None]]
T = TypeVar("T")

# Back-off of transient failures: initial * 2**n plus up to JITTER seconds, capped at MAX.
RETRY_INITIAL = 0.2
RETRY_MAX = 15.0
RETRY_JITTER = 1.0

# Kafka's rule for topic names; the in-process bus enforces it too, so that both agree.
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


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


def check_messages(messages: Sequence[Message]) -> None:
    """Refuse a publication with any malformed message, before any of it is sent.

    Raises ``TypeError`` or ``ValueError`` (both permanent errors).
    """
    # A call's messages share a few topics and usually one headers mapping: check each once.
    topics: set[str] = set()
    headers_seen: set[int] = set()  # ids of mappings checked (alive in ``messages``)
    for message in messages:
        if not isinstance(message, Message):
            raise TypeError(f"expected a Message, got {type(message).__name__}")
        topic = message.topic
        if not isinstance(topic, str) or topic not in topics:
            _check_topic(topic)
            topics.add(topic)
        if not isinstance(message.key, str):
            raise TypeError(f"message key must be str, got {type(message.key).__name__}")
        if not isinstance(message.value, bytes):
            raise TypeError(f"message value must be bytes, got {type(message.value).__name__}")
        if id(message.headers) not in headers_seen:
            _check_headers(message.headers)
            headers_seen.add(id(message.headers))


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str) or not _TOPIC_NAME.match(topic) or topic in {".", ".."}:
        raise ValueError(f"invalid topic name {topic!r}")


def _check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"message header {name!r} must map str to str")


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
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")

    def matches(self, topic: str) -> bool:
        """Whether ``topic`` is read; a pattern must match the whole topic name."""
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

    Returns when every message is either handled or dead-lettered: the caller may then commit.
    Raises the last transient error when ``stopping`` is set while the batch is still failing,
    and whatever dead-lettering itself raised permanently: the caller must then not commit
    the batch.
    """
    try:
        await _retrying(subscription, stopping, lambda: _call(subscription, batch))
    except Exception as error:
        if not is_permanent(error):
            raise
        failure: BaseException = error
    else:
        MESSAGES_HANDLED.labels(subscription.group, "ok").inc(len(batch))
        return
    if len(batch) > 1:
        # Replay one by one so that only the bad messages are dead-lettered.
        log.info(
            "batch failed permanently; replaying it message by message",
            extra={"group": subscription.group, "error": repr(failure)},
        )
        for message in batch:
            await deliver(bus, subscription, [message], stopping)
        return
    await _retrying(
        subscription, stopping, lambda: _dead_letter(bus, subscription, batch[0], failure)
    )


async def _retrying(
    subscription: Subscription, stopping: asyncio.Event, call: Callable[[], Awaitable[T]]
) -> T:
    """Run ``call`` until it succeeds or fails permanently, backing off on transient errors.

    The back-off is cut short by ``stopping``: then the last transient error is raised.
    """
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as error:
            if is_permanent(error) or stopping.is_set():
                raise
            delay = min(RETRY_MAX, RETRY_INITIAL * 2**attempt) + random.uniform(0, RETRY_JITTER)  # noqa: S311
            attempt += 1
            log.warning(
                "consumer batch failed, retrying",
                extra={
                    "group": subscription.group,
                    "error": repr(error),
                    "attempt": attempt,
                    "delay": round(delay, 2),
                },
            )
            if await wait_or_stop(stopping, delay):
                raise


async def wait_or_stop(stopping: asyncio.Event, delay: float) -> bool:
    """Sleep ``delay`` seconds unless ``stopping`` is set first; True if it was."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await stopping.wait()
    return stopping.is_set()


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
    # A lone message (or a batch from one trace) carries its trace into the handler's logs
    # and onward publications; a mixed batch belongs to no single trace.
    traces = {message.headers.get(Header.TRACEPARENT) for message in batch}
    token = current_traceparent.set(traces.pop() if len(traces) == 1 else None)
    try:
        await subscription.handler(batch)
    finally:
        current_traceparent.reset(token)
