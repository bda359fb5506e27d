"""Bus throughput: N keyed 1 KB messages published in batches and consumed by one group.

The same workload runs on the in-process bus and on Kafka (``KafkaBus``, its transactional
producer and read-committed consumer). The clock runs from the first publish to the moment the
handler has seen the last message. Messages are built before the clock starts: what is
measured is the bus, not the making of payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_common.bus import Bus, InProcessBus, KafkaBus
from fhir_common.events import Message, event_headers
from joinedup.bench.registry import Context, Result, Tracker, benchmark, rate

BATCH = 500
KEYS = 1_000
VALUE_BYTES = 1_024
IN_FLIGHT = 4  # publish calls in flight at once (Kafka gathers them into one transaction)
KAFKA_PARTITIONS = 6
WAIT_LIMIT = 300.0  # seconds before a run that stalls is declared failed


@dataclass(frozen=True)
class Workload:
    messages: int
    batch: int = BATCH
    keys: int = KEYS
    value_bytes: int = VALUE_BYTES
    in_flight: int = IN_FLIGHT

    def params(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "batch": self.batch,
            "keys": self.keys,
            "value_bytes": self.value_bytes,
            "in_flight": self.in_flight,
        }


def payloads(keys: int, size: int) -> list[bytes]:
    """One JSON value of exactly ``size`` bytes per key, each different."""
    values = []
    for key in range(keys):
        body = {"resourceType": "Observation", "id": f"bench-{key}", "status": "final", "pad": ""}
        room = size - len(orjson.dumps(body))
        if room < 0:
            raise ValueError(f"value_bytes {size} is too small for a message")
        body["pad"] = (f"{key:x}" * size)[:room]
        values.append(orjson.dumps(body))
    return values


def batches(topic: str, workload: Workload, start: int = 0) -> list[list[Message]]:
    """``workload.messages`` messages on ``topic``, keys round-robin, cut into batches."""
    values = payloads(workload.keys, workload.value_bytes)
    out: list[list[Message]] = []
    for first in range(start, start + workload.messages, workload.batch):
        headers = event_headers(source="bench", setting="primary")
        last = min(first + workload.batch, start + workload.messages)
        out.append(
            [
                Message(
                    topic=topic,
                    key=f"patient-{n % workload.keys}",
                    value=values[n % workload.keys],
                    headers=headers,
                )
                for n in range(first, last)
            ]
        )
    return out


class Counter:
    """A handler that counts what it is given and notes when it has seen ``expected``."""

    def __init__(self, tracker: Tracker | None = None) -> None:
        self.seen = 0
        self.expected = 0
        self.reached_at = 0.0
        self.reached = asyncio.Event()
        self.tracker = tracker

    def expect(self, total: int) -> None:
        """Wait (``wait``) for ``total`` messages in all, counting those already seen."""
        self.expected = total
        self.reached.clear()
        self._check()

    async def __call__(self, messages: Sequence[Message]) -> None:
        self.seen += len(messages)
        if self.tracker:
            self.tracker.advance(len(messages))
        self._check()

    def _check(self) -> None:
        if self.expected and self.seen >= self.expected and not self.reached.is_set():
            self.reached_at = time.perf_counter()
            self.reached.set()

    async def wait(self, what: str) -> None:
        try:
            async with asyncio.timeout(WAIT_LIMIT):
                await self.reached.wait()
        except TimeoutError:
            raise RuntimeError(
                f"{what}: saw {self.seen} of {self.expected} messages in {WAIT_LIMIT:.0f} s"
            ) from None


async def publish_all(
    bus: Bus, work: list[list[Message]], in_flight: int, tracker: Tracker | None = None
) -> float:
    """Publish every batch with ``in_flight`` calls at a time; return when the last returned.

    Each publisher yields to the event loop between calls, as a real producer does while it
    waits for its next input, so that consumers in the same process get their turn.
    """
    queue = iter(work)

    async def publisher() -> None:
        for batch in queue:
            await bus.publish(batch)
            if tracker:
                tracker.advance(len(batch))
            await asyncio.sleep(0)

    await asyncio.gather(*(publisher() for _ in range(in_flight)))
    return time.perf_counter()


# -- in-process --------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    publish_seconds: float  # first publish to the last publish returned
    seconds: float  # first publish to the last message handled
    partitions: int


async def _inprocess_run(ctx: Context, workload: Workload, label: str) -> Timing:
    """One run on a fresh in-process bus, as embedded mode makes it."""
    topic = "bench.throughput"
    work = batches(topic, workload)
    bus = InProcessBus()
    with ctx.track(label, total=workload.messages) as tracker:
        counter = Counter(tracker)
        bus.subscribe("bench", counter, service="bench", topics=[topic], max_batch=workload.batch)
        await bus.start()
        try:
            counter.expect(workload.messages)
            started = time.perf_counter()
            published = await publish_all(bus, work, workload.in_flight)
            await counter.wait("in-process bus")
        finally:
            await bus.stop()
    return Timing(published - started, counter.reached_at - started, bus.partitions)


@benchmark("bus.inprocess.throughput")
async def inprocess_throughput(ctx: Context) -> list[Result]:
    """In-process bus: messages/s from the first publish to the last message handled."""
    workload = Workload(messages=ctx.size(200_000, 20_000))
    warmup = Workload(messages=max(workload.messages // 10, workload.batch))
    await _inprocess_run(ctx, warmup, "in-process bus (warm-up)")
    timing = await _inprocess_run(ctx, workload, "in-process bus")
    params = {
        **workload.params(),
        "partitions": timing.partitions,
        "groups": 1,
        "warmup_messages": warmup.messages,
        "publish_seconds": round(timing.publish_seconds, 4),
    }
    throughput = rate(workload.messages, timing.seconds)
    return [Result("bus.inprocess.throughput", throughput, "msg/s", params, timing.seconds)]


# -- Kafka -------------------------------------------------------------------------------


@benchmark("bus.kafka.throughput")
async def kafka_throughput(ctx: Context) -> list[Result]:
    """KafkaBus on the real broker: end to end, and publishing alone (acknowledged, committed)."""
    bootstrap = ctx.env("JOINEDUP_KAFKA_BOOTSTRAP")
    workload = Workload(messages=ctx.size(100_000, 10_000))
    warmup = Workload(messages=max(workload.messages // 20, workload.batch))
    run = uuid.uuid4().hex[:12]
    publish_topic, e2e_topic, group = f"bench.publish.{run}", f"bench.e2e.{run}", f"bench-{run}"
    bus = KafkaBus(bootstrap, client_id=f"bench-{run}", partitions=KAFKA_PARTITIONS)
    try:
        await bus.ensure_topics([publish_topic, e2e_topic])
        with ctx.track("Kafka: consuming", total=warmup.messages + workload.messages) as tracker:
            counter = Counter(tracker)
            bus.subscribe(group, counter, service="bench", topics=[e2e_topic], max_batch=BATCH)
            await bus.start()
            try:
                # Warm-up: the producer connects and the consumer joins its group.
                counter.expect(warmup.messages)
                await publish_all(bus, batches(e2e_topic, warmup), warmup.in_flight)
                await counter.wait("Kafka warm-up")

                # Publishing alone: nobody reads this topic.
                work = batches(publish_topic, workload)
                with ctx.track("Kafka: publishing only", total=workload.messages) as published:
                    started = time.perf_counter()
                    done = await publish_all(bus, work, workload.in_flight, published)
                publish_only = done - started

                # End to end: publish while the group consumes.
                work = batches(e2e_topic, workload, start=warmup.messages)
                counter.expect(warmup.messages + workload.messages)
                started = time.perf_counter()
                done = await publish_all(bus, work, workload.in_flight)
                await counter.wait("Kafka end to end")
                seconds = counter.reached_at - started
                publish_during = done - started
            finally:
                await bus.stop()
    finally:
        with contextlib.suppress(Exception):
            await _delete_topics(bootstrap, [publish_topic, e2e_topic])
    params = {
        **workload.params(),
        "partitions": KAFKA_PARTITIONS,
        "groups": 1,
        "warmup_messages": warmup.messages,
        "producer": "transactional, idempotent, acks=all",
        "consumer": "read_committed, manual commit",
    }
    return [
        Result(
            "bus.kafka.throughput",
            rate(workload.messages, seconds),
            "msg/s",
            {**params, "publish_seconds": round(publish_during, 4)},
            seconds,
        ),
        Result(
            "bus.kafka.throughput.publish",
            rate(workload.messages, publish_only),
            "msg/s",
            {**params, "groups": 0, "consumer": "none"},
            publish_only,
        ),
    ]


async def _delete_topics(bootstrap: str, topics: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-cleanup")
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()
