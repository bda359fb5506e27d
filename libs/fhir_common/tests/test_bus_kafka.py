"""The bus contract on a real Kafka broker, and what only Kafka has (transactions).

The scenarios are those of ``test_bus_memory.py`` (loaded from it, so both implementations
are held to the same code); each test here uses its own topics and consumer groups.
Run with ``JOINEDUP_KAFKA_BOOTSTRAP=127.0.0.1:9092 uv run pytest -m integration``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from fhir_common.bus import KafkaBus
from fhir_common.bus.base import Bus
from fhir_common.events import DEADLETTER, Header, Message

pytestmark = pytest.mark.integration

PARTITIONS = 6  # as in production (and the shared topics a bus creates on start)


def _load_scenarios() -> ModuleType:
    """``test_bus_memory`` as a module, through pytest's assertion rewriting when present."""
    name = "test_bus_memory"
    if name in sys.modules:
        return sys.modules[name]
    folder = str(Path(__file__).parent)
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(name, [folder]) if find_spec else None
        if spec is not None and spec.origin and Path(spec.origin).parent == Path(folder):
            break
    else:
        spec = importlib.util.spec_from_file_location(name, Path(folder) / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


scenarios = _load_scenarios()


async def read_topic(
    bootstrap: str, topic: str, *, isolation: str = "read_committed"
) -> list[Message]:
    """Everything readable on ``topic`` now, with the given isolation level."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in description["partitions"]]
    if description["error_code"] or not tps:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=isolation,
    )
    await consumer.start()
    messages: list[Message] = []
    try:
        async with asyncio.timeout(15):
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                fetched = await consumer.getmany(timeout_ms=200)
                for records in fetched.values():
                    messages.extend(
                        Message(
                            topic=r.topic,
                            key=r.key.decode() if r.key else "",
                            value=r.value or b"",
                            headers={k: v.decode() for k, v in r.headers},
                            partition=r.partition,
                            offset=r.offset,
                        )
                        for r in records
                    )
    finally:
        await consumer.stop()
    return messages


class KafkaEnv(scenarios.BusEnv):
    timeout = 20.0

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.buses: list[KafkaBus] = []

    def bus(self) -> Bus:
        bus = KafkaBus(self.bootstrap, client_id=self.unique("client"), partitions=PARTITIONS)
        self.buses.append(bus)
        return bus

    async def start(self, *buses: Bus) -> None:
        await asyncio.gather(*(bus.start() for bus in buses))

    async def stop(self, bus: Bus) -> None:
        await bus.stop()

    async def reopen(self, bus: Bus) -> Bus:
        fresh = self.bus()
        for s in bus.subscriptions:
            fresh.subscribe(
                s.group,
                s.handler,
                service=s.service,
                topics=s.topics,
                pattern=s.pattern,
                max_batch=s.max_batch,
            )
        await fresh.start()
        return fresh

    async def create_topics(self, *topics: str) -> None:
        admin_bus = KafkaBus(self.bootstrap, client_id="bus-tests", partitions=PARTITIONS)
        await admin_bus.ensure_topics(topics)

    async def dead_letters(self, topic: str) -> list[Message]:
        return [
            message
            for message in await read_topic(self.bootstrap, DEADLETTER)
            if message.headers.get(Header.ORIGIN, "").startswith(f"{topic}/")
        ]

    async def close(self) -> None:
        await asyncio.gather(*(bus.stop() for bus in self.buses), return_exceptions=True)


@pytest.fixture
async def kafka_env(kafka_bootstrap: str) -> AsyncIterator[KafkaEnv]:
    env = KafkaEnv(kafka_bootstrap)
    try:
        yield env
    finally:
        await env.close()


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS, ids=scenarios.scenario_id)
async def test_contract(
    kafka_env: KafkaEnv, scenario: Callable[[KafkaEnv], Awaitable[None]]
) -> None:
    await scenario(kafka_env)


# ------------------------------------------------------------------------- Kafka only


async def test_refused_record_aborts_its_call_only(
    kafka_env: KafkaEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """A record the broker refuses (too large for its topic) aborts the transaction of its
    publish call: read_committed readers see none of that call, while a call gathered into
    the same transaction is published, and the producer works afterwards."""
    suffix = uuid.uuid4().hex[:10]
    topic, strict = f"bt-atomic-{suffix}", f"bt-strict-{suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_env.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topic, PARTITIONS, 1),
                NewTopic(strict, 1, 1, topic_configs={"max.message.bytes": "1000"}),
            ]
        )
    finally:
        await admin.close()
    bus = kafka_env.bus()
    await kafka_env.start(bus)

    doomed = [
        scenarios.make(topic, "patient-1", {"call": "doomed", "i": 0}),
        scenarios.make(topic, "patient-2", {"call": "doomed", "i": 1}),
        scenarios.make(strict, "patient-1", None, value=b"x" * 5000),  # refused by the broker
    ]
    good = [scenarios.make(topic, f"patient-{i}", {"call": "good", "i": i}) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="fhir_common.bus.kafka"):
        outcomes = await asyncio.gather(
            bus.publish(doomed), bus.publish(good), return_exceptions=True
        )
    assert isinstance(outcomes[0], KafkaError), outcomes[0]
    assert outcomes[1] is None, outcomes[1]
    # Both calls were gathered into one transaction, which failed as a whole first.
    assert "group transaction failed" in caplog.text

    after = [scenarios.make(topic, "patient-1", {"call": "after"})]
    await bus.publish(after)  # the producer recovered

    committed = scenarios.ids(await read_topic(kafka_env.bootstrap, topic))
    assert committed == scenarios.ids(good) | scenarios.ids(after)
    # The doomed records did reach the log, inside a transaction that was aborted.
    written = scenarios.ids(
        await read_topic(kafka_env.bootstrap, topic, isolation="read_uncommitted")
    )
    assert scenarios.ids(doomed[:2]) <= written
    assert await read_topic(kafka_env.bootstrap, strict) == []


async def test_stop_flushes_publications_in_flight(kafka_env: KafkaEnv) -> None:
    topic = kafka_env.unique("flush")
    bus = kafka_env.bus()
    await kafka_env.start(bus)
    calls = [[scenarios.make(topic, f"patient-{c}", {"c": c})] for c in range(20)]
    publishing = [asyncio.create_task(bus.publish(call)) for call in calls]
    await asyncio.sleep(0)  # the calls are queued
    await asyncio.wait_for(bus.stop(), timeout=15)
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*publishing, return_exceptions=True)
    assert outcomes == [None] * len(calls)
    sent = set().union(*(scenarios.ids(call) for call in calls))
    assert scenarios.ids(await read_topic(kafka_env.bootstrap, topic)) == sent

    with pytest.raises(RuntimeError, match="not started"):
        await asyncio.wait_for(bus.publish(calls[0]), timeout=5)


async def test_subscribe_while_running(kafka_env: KafkaEnv) -> None:
    topic = kafka_env.unique("late-sub")
    bus = kafka_env.bus()
    await kafka_env.start(bus)
    recorder = scenarios.Recorder()
    bus.subscribe(kafka_env.unique("g"), recorder, service="test", topics=[topic])
    sent = [scenarios.make(topic, "patient-1", {"i": i}) for i in range(3)]
    await bus.publish(sent)
    await scenarios.eventually(
        lambda: recorder.handled_ids() >= scenarios.ids(sent), kafka_env.timeout, "handled"
    )
    await bus.ping()
    consumers = list(bus._consumers)
    assert len(consumers) == 1
    await asyncio.wait_for(bus.stop(), timeout=15)
    assert all(task.done() for task in consumers)  # stopped with the bus, not after it


async def test_foreign_bytes_do_not_stop_the_consumer(kafka_env: KafkaEnv) -> None:
    """A record from another producer with a binary key and header is still delivered."""
    topic = kafka_env.unique("foreign")
    await kafka_env.create_topics(topic)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_env.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, b"{}", key=b"\xff\xfe", headers=[("source", b"\xff"), ("empty", None)]
        )
    finally:
        await producer.stop()
    recorder = scenarios.Recorder()
    consumer = kafka_env.bus()
    consumer.subscribe(kafka_env.unique("g"), recorder, service="test", topics=[topic])
    await kafka_env.start(consumer)
    await scenarios.eventually(lambda: bool(recorder.handled), kafka_env.timeout, "the record")
    [message] = recorder.handled
    assert message.value == b"{}"
    assert message.headers["source"] == "\ufffd"
    assert message.headers["empty"] == ""
    good = [scenarios.make(topic, "patient-1", {"after": True})]
    await consumer.publish(good)
    await scenarios.eventually(
        lambda: recorder.handled_ids() >= scenarios.ids(good), kafka_env.timeout, "next message"
    )
    await consumer.ping()
