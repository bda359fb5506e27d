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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
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

log = logging.getLogger(__name__)

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


async def partitions_of(bootstrap: str, topic: str) -> list[TopicPartition]:
    """The partitions of ``topic`` now (none if it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [description] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if description["error_code"]:
        return []
    return [TopicPartition(topic, p["partition"]) for p in description["partitions"]]


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Where each partition of ``topic`` ends now, for read_committed readers."""
    tps = await partitions_of(bootstrap, topic)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        async with asyncio.timeout(15):
            return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    isolation: str = "read_committed",
    start: Mapping[TopicPartition, int] | None = None,
) -> list[Message]:
    """Everything readable on ``topic`` now, with the given isolation level; from ``start``
    for the partitions it names, from the beginning for the others."""
    tps = await partitions_of(bootstrap, topic)
    if not tps:
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
            start = start or {}
            if from_start := [tp for tp in tps if tp not in start]:
                await consumer.seek_to_beginning(*from_start)
            for tp in tps:
                if tp in start:
                    consumer.seek(tp, start[tp])
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
        # Every name handed out or topic created: the topics among them (and the pattern
        # scenario's ``<name>.<Type>``) are this env's, deleted on close.
        self.names: set[str] = set()
        # Where the shared dead-letter topic ended when the env opened: what came before is
        # other tests' (and, on a long-lived broker, other runs').
        self.dead_letters_from: dict[TopicPartition, int] = {}

    def unique(self, name: str) -> str:
        unique = super().unique(name)
        self.names.add(unique)
        return unique

    async def open(self) -> None:
        # A partition not there yet (no dead-letter topic yet) is read from its start.
        self.dead_letters_from = await end_offsets(self.bootstrap, DEADLETTER)

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
        self.names.update(topics)
        admin_bus = KafkaBus(self.bootstrap, client_id="bus-tests", partitions=PARTITIONS)
        await admin_bus.ensure_topics(topics)

    async def dead_letters(self, topic: str) -> list[Message]:
        return [
            message
            for message in await read_topic(
                self.bootstrap, DEADLETTER, start=self.dead_letters_from
            )
            if message.headers.get(Header.ORIGIN, "").startswith(f"{topic}/")
        ]

    async def close(self) -> None:
        await asyncio.gather(*(bus.stop() for bus in self.buses), return_exceptions=True)
        await self.delete_topics()

    async def delete_topics(self) -> None:
        """Delete this env's topics, so that they do not pile up on a long-lived broker (and
        slow every pattern consumer's metadata refresh). Best effort: never fails a test."""
        if not self.names:
            return
        try:
            async with asyncio.timeout(30):
                admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
                await admin.start()
                try:
                    mine = [
                        topic
                        for topic in await admin.list_topics()
                        if topic.partition(".")[0] in self.names
                    ]
                    if mine:
                        response = await admin.delete_topics(mine, timeout_ms=10_000)
                        if failed := [e for e in response.topic_error_codes if e[1]]:
                            log.warning("some test topics were not deleted: %s", failed)
                finally:
                    await admin.close()
        except Exception:
            log.warning("could not delete the test topics", exc_info=True)


@pytest.fixture
async def kafka_env(kafka_bootstrap: str) -> AsyncIterator[KafkaEnv]:
    env = KafkaEnv(kafka_bootstrap)
    try:
        await env.open()
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
    topic, strict = kafka_env.unique("atomic"), kafka_env.unique("strict")
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


# ------------------------------------------------------------------ batched publishing


async def test_partitions_are_those_of_kafkas_default_partitioner(kafka_env: KafkaEnv) -> None:
    """Each key lands where a plain producer's ``send`` (Kafka's default partitioner) puts
    it, so other producers' messages of a patient share that patient's partition."""
    topic, reference = kafka_env.unique("partitioning"), kafka_env.unique("reference")
    await kafka_env.create_topics(topic, reference)
    keys = ["", "9434765919", "feed-a|patient-1", "feed-b|ünïcode", *(f"k{i}" for i in range(40))]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_env.bootstrap)
    await producer.start()
    try:
        expected = {}
        for key in keys:
            sent = await producer.send_and_wait(reference, b"{}", key=key.encode())
            expected[key] = sent.partition
    finally:
        await producer.stop()
    assert len(set(expected.values())) > 1  # the keys do spread

    bus = kafka_env.bus()
    await kafka_env.start(bus)
    await bus.publish([scenarios.make(topic, key, {"key": key}) for key in keys])
    got = {m.key: m.partition for m in await read_topic(kafka_env.bootstrap, topic)}
    assert got == expected


async def test_one_call_larger_than_a_record_batch_keeps_order_and_atomicity(
    kafka_env: KafkaEnv,
) -> None:
    """A call whose messages fill several record batches per partition (and one message larger
    than a batch) arrives whole, once, in order per key; concurrent calls keep their order."""
    from fhir_common.bus import kafka as kafka_bus

    topic = kafka_env.unique("big")
    await kafka_env.create_topics(topic)
    bus = kafka_env.bus()
    await kafka_env.start(bus)
    filler = b"x" * (kafka_bus.BATCH_BYTES // 8)
    big = [
        scenarios.make(topic, f"patient-{i % 3}", None, value=b'{"i": %d, "f": "%s"}' % (i, filler))
        for i in range(60)
    ]
    huge = scenarios.make(topic, "patient-0", None, value=b"y" * (kafka_bus.BATCH_BYTES * 2))
    small = [scenarios.make(topic, f"patient-{i % 3}", {"small": i}) for i in range(30)]
    await asyncio.gather(bus.publish([*big, huge]), bus.publish(small))

    read = await read_topic(kafka_env.bootstrap, topic)
    assert sorted(scenarios.event_id(m) for m in read) == sorted(
        scenarios.event_id(m) for m in [*big, huge, *small]
    )
    for key in {m.key for m in read}:
        order = [scenarios.event_id(m) for m in read if m.key == key]
        assert [scenarios.event_id(m) for m in [*big, huge] if m.key == key] == [
            i for i in order if i in scenarios.ids([*big, huge])
        ]
        assert [scenarios.event_id(m) for m in small if m.key == key] == [
            i for i in order if i in scenarios.ids(small)
        ]
        assert len({m.partition for m in read if m.key == key}) == 1


# ------------------------------------------------------------------ transactional ids

_LEAVE_A_TRANSACTION_OPEN = """
import asyncio, sys
from aiokafka import AIOKafkaProducer

async def main():
    bootstrap, transactional_id, topic = sys.argv[1:4]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=transactional_id, acks="all"
    )
    await producer.start()
    await producer.begin_transaction()
    await producer.send_and_wait(topic, b"left open", key=b"patient-1")
    print("open", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_restart_fences_the_transaction_a_killed_process_left_open(
    kafka_env: KafkaEnv,
) -> None:
    """A replica killed mid-publish leaves its transaction open; its restart (same instance
    id, so same transactional id) aborts it at once, and read_committed readers go on without
    waiting out transaction.timeout.ms (60 s)."""
    import signal
    import subprocess

    topic, instance = kafka_env.unique("fence"), kafka_env.unique("replica")
    await kafka_env.create_topics(topic)
    client_id = kafka_env.unique("client")
    killed = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _LEAVE_A_TRANSACTION_OPEN,
        kafka_env.bootstrap,
        f"{client_id}-{instance}",
        topic,
        stdout=subprocess.PIPE,
    )
    try:
        assert killed.stdout is not None
        async with asyncio.timeout(30):
            assert (await killed.stdout.readline()).strip() == b"open"
    finally:
        killed.send_signal(signal.SIGKILL)
        await killed.wait()
    uncommitted = await read_topic(kafka_env.bootstrap, topic, isolation="read_uncommitted")
    assert [m.value for m in uncommitted] == [b"left open"]

    restarted = KafkaBus(
        kafka_env.bootstrap, client_id=client_id, partitions=PARTITIONS, instance_id=instance
    )
    kafka_env.buses.append(restarted)
    await restarted.start()
    assert restarted.transactional_id == f"{client_id}-{instance}"
    after = [scenarios.make(topic, "patient-1", {"after": "restart"})]
    await restarted.publish(after)
    # Without the fencing, the open transaction would hold the last stable offset before
    # "left open" and this would read nothing for a minute.
    committed = await read_topic(kafka_env.bootstrap, topic)
    assert scenarios.ids(committed) == scenarios.ids(after)


async def test_live_buses_never_share_a_transactional_id(kafka_env: KafkaEnv) -> None:
    """Same client id on one host: distinct ids while both live; a bus started after one
    stopped takes the freed id (the restart that fences); an explicit id is claimed once."""
    from fhir_common.bus.identity import TransactionalIdInUseError

    client_id = kafka_env.unique("client")
    first, second = (
        KafkaBus(kafka_env.bootstrap, client_id=client_id, partitions=PARTITIONS) for _ in "12"
    )
    kafka_env.buses += [first, second]
    await kafka_env.start(first, second)
    ids_live = {first.transactional_id, second.transactional_id}
    assert len(ids_live) == 2
    assert all(i and i.startswith(f"{client_id}-") for i in ids_live)
    freed = first.transactional_id
    await first.stop()
    assert first.transactional_id is None
    third = KafkaBus(kafka_env.bootstrap, client_id=client_id, partitions=PARTITIONS)
    kafka_env.buses.append(third)
    await third.start()
    assert third.transactional_id == freed
    topic = kafka_env.unique("ids")
    sent = [scenarios.make(topic, "patient-1", {"bus": 2}), scenarios.make(topic, "p2", {})]
    await asyncio.gather(second.publish(sent[:1]), third.publish(sent[1:]))  # neither fenced
    assert scenarios.ids(await read_topic(kafka_env.bootstrap, topic)) == scenarios.ids(sent)

    instance = kafka_env.unique("replica")
    named = KafkaBus(kafka_env.bootstrap, client_id=client_id, instance_id=instance)
    twin = KafkaBus(kafka_env.bootstrap, client_id=client_id, instance_id=instance)
    kafka_env.buses += [named, twin]
    await named.start()
    with pytest.raises(TransactionalIdInUseError, match="JOINEDUP_INSTANCE_ID"):
        await twin.start()
    await named.ping()


# ------------------------------------------------------------------ rebalances


async def test_a_rebalance_during_a_batch_does_not_stop_the_consumer(
    kafka_env: KafkaEnv,
) -> None:
    """A second member joins the group while the first holds an uncommitted batch: the first
    loses some of that batch's partitions (its commit of them is refused), keeps consuming what
    it still owns, and the newcomer gets the revoked messages again (at least once)."""
    topic, group = kafka_env.unique("rebalance"), kafka_env.unique("g")
    await kafka_env.create_topics(topic)
    publisher = kafka_env.bus()
    await kafka_env.start(publisher)
    first_wave = [scenarios.make(topic, f"patient-{i}", {"wave": 1, "i": i}) for i in range(60)]
    await publisher.publish(first_wave)

    in_batch, release = asyncio.Event(), asyncio.Event()
    early = scenarios.Recorder()

    async def holds_its_first_batch(batch: Sequence[Message]) -> None:
        await early(batch)
        in_batch.set()
        await release.wait()

    member_a = kafka_env.bus()
    member_a.subscribe(group, holds_its_first_batch, service="test", topics=[topic])
    await kafka_env.start(member_a)
    async with asyncio.timeout(kafka_env.timeout):
        await in_batch.wait()
    held = {m.partition for m in early.handled}

    newcomer = scenarios.Recorder()
    member_b = kafka_env.bus()
    member_b.subscribe(group, newcomer, service="test", topics=[topic])
    await kafka_env.start(member_b)
    # B owns partitions now, and reads them from the last commit: A's batch is not committed.
    await scenarios.eventually(lambda: bool(newcomer.handled), kafka_env.timeout, "B's share")
    taken = {m.partition for m in newcomer.handled}
    assert taken & held, "B took none of the partitions of A's batch in hand"
    release.set()

    second_wave = [scenarios.make(topic, f"patient-{i}", {"wave": 2, "i": i}) for i in range(60)]
    await publisher.publish(second_wave)
    everything = scenarios.ids(first_wave) | scenarios.ids(second_wave)
    await scenarios.eventually(
        lambda: early.handled_ids() | newcomer.handled_ids() >= everything,
        kafka_env.timeout,
        "both waves, between A and B",
    )
    # A goes on with the partitions it kept.
    assert early.handled_ids() & scenarios.ids(second_wave)
    await member_a.ping()
    await member_b.ping()
