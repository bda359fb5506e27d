"""The in-process bus: embedded mode and fast unit tests.

Same semantics as Kafka (see ``base``): keyed partitions, ordered per key, consumer groups
sharing partitions among their members, at-least-once delivery with commit after success,
dead-lettering of bad data. The log lives in memory and is trimmed once every group that
reads a topic has passed an offset; a group that subscribes later starts at the oldest
message still kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from fhir_common.bus.base import Bus, Subscription, check_messages, deliver, wait_or_stop
from fhir_common.events import Message
from fhir_common.observability import MESSAGES_PUBLISHED

log = logging.getLogger(__name__)


def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


@dataclass
class _Partition:
    base: int = 0  # offset of messages[0]
    messages: list[Message] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.base + len(self.messages)

    def read(self, offset: int, limit: int) -> list[Message]:
        start = max(offset, self.base) - self.base
        return self.messages[start : start + limit]

    def trim_to(self, offset: int) -> None:
        drop = min(offset, self.end) - self.base
        if drop > 0:
            del self.messages[:drop]
            self.base += drop


@dataclass
class _Member:
    subscription: Subscription
    index: int
    task: asyncio.Task[None] | None = None


class InProcessBus(Bus):
    def __init__(self, partitions: int = 4) -> None:
        super().__init__()
        self.partitions = partitions
        self._topics: dict[str, list[_Partition]] = {}
        self._offsets: dict[tuple[str, str, int], int] = {}  # (group, topic, partition)
        self._members: dict[str, list[_Member]] = {}
        self._new_data = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._running = False
        self._busy = 0  # members in the middle of a batch

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._stopping.clear()
        for members in self._members.values():
            for member in members:
                self._start_member(member)

    async def stop(self) -> None:
        self._stopping.set()
        async with self._new_data:
            self._new_data.notify_all()
        tasks = [m.task for ms in self._members.values() for m in ms if m.task]
        await asyncio.gather(*tasks, return_exceptions=True)
        for members in self._members.values():
            for member in members:
                member.task = None
        self._running = False

    async def ping(self) -> None:
        if not self._running:
            raise RuntimeError("in-process bus is not running")

    def _on_subscribe(self, subscription: Subscription) -> None:
        members = self._members.setdefault(subscription.group, [])
        member = _Member(subscription, index=len(members))
        members.append(member)
        if self._running:
            self._start_member(member)

    def _start_member(self, member: _Member) -> None:
        name = f"bus:{member.subscription.group}:{member.index}"
        member.task = asyncio.create_task(self._consume(member), name=name)

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        check_messages(messages)  # all or nothing: refuse a bad call before appending any of it
        # No await between appends: the whole call becomes visible at once.
        for message in messages:
            partitions = self._topics.setdefault(
                message.topic, [_Partition() for _ in range(self.partitions)]
            )
            number = partition_for(message.key, self.partitions)
            partition = partitions[number]
            # Our own copy of the headers, as if serialised: later changes by the caller are
            # not seen by consumers.
            delivered = replace(
                message, headers=dict(message.headers), partition=number, offset=partition.end
            )
            partition.messages.append(delivered)
            MESSAGES_PUBLISHED.labels(message.topic).inc()
        async with self._new_data:
            self._new_data.notify_all()

    # -- consuming -------------------------------------------------------------------------
    def _assigned(self, member: _Member) -> list[tuple[str, int]]:
        group = member.subscription.group
        size = len(self._members[group])
        return [
            (topic, number)
            for topic in sorted(self._topics)
            if member.subscription.matches(topic)
            for number in range(self.partitions)
            if number % size == member.index
        ]

    def _next_batch(self, member: _Member) -> tuple[list[Message], dict[tuple[str, int], int]]:
        group = member.subscription.group
        batch: list[Message] = []
        positions: dict[tuple[str, int], int] = {}
        for topic, number in self._assigned(member):
            room = member.subscription.max_batch - len(batch)
            if room <= 0:
                break
            partition = self._topics[topic][number]
            offset = max(self._offsets.get((group, topic, number), 0), partition.base)
            taken = partition.read(offset, room)
            if taken:
                batch.extend(taken)
                positions[(topic, number)] = offset + len(taken)
        return batch, positions

    async def _consume(self, member: _Member) -> None:
        group = member.subscription.group
        while not self._stopping.is_set():
            batch, positions = self._next_batch(member)
            if not batch:
                async with self._new_data:
                    if not self._next_batch(member)[0] and not self._stopping.is_set():
                        await self._new_data.wait()
                continue
            self._busy += 1
            try:
                await deliver(self, member.subscription, batch, self._stopping)
            except Exception:
                if self._stopping.is_set():
                    return  # not committed: redelivered on the next start
                # Dead-lettering failed: not committed, so the batch comes again after a pause.
                log.exception("in-process consumer failed", extra={"group": group})
                await wait_or_stop(self._stopping, 1.0)
                continue
            finally:
                self._busy -= 1
            for (topic, number), offset in positions.items():
                self._offsets[(group, topic, number)] = offset
            self._trim()
            async with self._new_data:
                self._new_data.notify_all()

    def _trim(self) -> None:
        for topic, partitions in self._topics.items():
            readers = [s.group for s in self.subscriptions if s.matches(topic)]
            if not readers:
                continue
            for number, partition in enumerate(partitions):
                low = min(self._offsets.get((g, topic, number), 0) for g in readers)
                partition.trim_to(low)

    def pending(self) -> int:
        """Messages some subscribed group has not yet committed (0 when all is handled)."""
        total = 0
        for topic, partitions in self._topics.items():
            for group in {s.group for s in self.subscriptions if s.matches(topic)}:
                for number, partition in enumerate(partitions):
                    # A group that subscribed after a trim starts at the oldest message kept.
                    offset = max(self._offsets.get((group, topic, number), 0), partition.base)
                    total += partition.end - offset
        return total

    async def wait_idle(self) -> None:
        """Wait until every group has handled everything, including what handlers published.

        Callers bound it with ``asyncio.timeout``.
        """
        while self.pending() or self._busy:
            async with self._new_data:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_data.wait(), timeout=0.5)
