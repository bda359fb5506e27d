"""The bus contract (``fhir_common.bus.base``), proven on the in-process bus.

The ``scenario_*`` functions below are the contract itself, written once against a small
harness (``BusEnv``); ``test_bus_kafka.py`` runs the very same scenarios against a real broker.
Below them come tests of things only the in-process bus has (``pending``, ``wait_idle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence

import orjson
import pytest

from fhir_common.bus import InProcessBus, KafkaBus, PermanentError, create_bus, is_permanent
from fhir_common.bus import base as bus_base
from fhir_common.bus.base import Bus
from fhir_common.events import DEADLETTER, Header, Message, event_headers
from fhir_common.observability import current_traceparent, new_traceparent, trace_id
from fhir_common.settings import Settings

SERVICE = "bus-contract-test"

# ----------------------------------------------------------------------------- harness


class BusEnv(ABC):
    """What a scenario needs from one bus implementation."""

    #: seconds a scenario waits for something that should happen
    timeout: float

    def unique(self, name: str) -> str:
        """A topic or group name no other test uses."""
        return f"bt-{name}-{uuid.uuid4().hex[:10]}"

    @abstractmethod
    def bus(self) -> Bus:
        """A bus over the shared log (Kafka: a new client; in-process: the one bus)."""

    @abstractmethod
    async def start(self, *buses: Bus) -> None: ...

    @abstractmethod
    async def stop(self, bus: Bus) -> None: ...

    @abstractmethod
    async def reopen(self, bus: Bus) -> Bus:
        """After ``stop``: the same subscriptions consuming again (Kafka: a new client)."""

    @abstractmethod
    async def create_topics(self, *topics: str) -> None: ...

    @abstractmethod
    async def dead_letters(self, topic: str) -> list[Message]:
        """Every dead letter so far whose message came from ``topic``."""


class Recorder:
    """A batch handler that remembers what it was given and what it handled.

    ``check`` runs on every message before anything counts as handled (like a database
    transaction: a batch that raises handles nothing).
    """

    def __init__(self, check: Callable[[Message], None] | None = None) -> None:
        self.check = check
        self.calls: list[list[Message]] = []
        self.failures: list[BaseException] = []
        self.batches: list[list[Message]] = []
        self.traces: list[tuple[str | None, str | None]] = []  # (header, context)
        self.fail_next = 0  # raise ConnectionError on this many more calls
        self.always_fail = False

    async def __call__(self, batch: Sequence[Message]) -> None:
        self.calls.append(list(batch))
        self.traces.extend(
            (message.headers.get(Header.TRACEPARENT), current_traceparent.get())
            for message in batch
        )
        await asyncio.sleep(0)  # a real handler awaits something
        try:
            if self.always_fail or self.fail_next > 0:
                self.fail_next -= 1
                raise ConnectionError("database away")
            for message in batch:
                if self.check:
                    self.check(message)
        except Exception as error:
            self.failures.append(error)
            raise
        self.batches.append(list(batch))

    @property
    def handled(self) -> list[Message]:
        return [message for batch in self.batches for message in batch]

    def handled_ids(self) -> set[str]:
        return {event_id(m) for m in self.handled}

    def reset(self) -> None:
        self.calls.clear()
        self.failures.clear()
        self.batches.clear()
        self.traces.clear()


def event_id(message: Message) -> str:
    return message.headers.get(Header.EVENT_ID, "")


def ids(messages: Sequence[Message]) -> set[str]:
    return {event_id(m) for m in messages}


def make(
    topic: str,
    key: str,
    body: object,
    *,
    source: str = "feed-test",
    traceparent: str | None = None,
    value: bytes | None = None,
) -> Message:
    headers = event_headers(source=source, setting="acute", traceparent=traceparent)
    payload = orjson.dumps(body) if value is None else value
    return Message(topic=topic, key=key, value=payload, headers=headers)


async def eventually(condition: Callable[[], bool], within: float, what: str) -> None:
    """Wait until ``condition()`` holds, at most ``within`` seconds (polling: handlers and
    consumers run in other tasks, and some of what we check is in the broker)."""
    try:
        async with asyncio.timeout(within):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None


async def eventually_async(
    condition: Callable[[], Awaitable[bool]], within: float, what: str
) -> None:
    try:
        async with asyncio.timeout(within):
            while not await condition():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None


@contextlib.contextmanager
def backoff(initial: float, jitter: float, maximum: float | None = None) -> Iterator[None]:
    """Change the consumers' retry back-off for one scenario: a wait is
    ``min(maximum, initial * 2**n)`` plus up to ``jitter`` s (``maximum`` defaults to the
    bus's ``RETRY_MAX``, which caps even the first wait)."""
    saved = bus_base.RETRY_INITIAL, bus_base.RETRY_JITTER, bus_base.RETRY_MAX
    bus_base.RETRY_INITIAL, bus_base.RETRY_JITTER = initial, jitter
    if maximum is not None:
        bus_base.RETRY_MAX = maximum
    try:
        yield
    finally:
        bus_base.RETRY_INITIAL, bus_base.RETRY_JITTER, bus_base.RETRY_MAX = saved


# ----------------------------------------------------------------------------- scenarios


async def scenario_round_trip_keeps_headers(env: BusEnv) -> None:
    topic, group = env.unique("roundtrip"), env.unique("g")
    recorder = Recorder()
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic])
    await env.start(consumer, publisher)

    sent = [make(topic, f"patient-{i}", {"i": i}, traceparent=new_traceparent()) for i in range(3)]
    await publisher.publish(sent)
    await eventually(lambda: len(recorder.handled) >= 3, env.timeout, "3 messages")

    got = {event_id(m): m for m in recorder.handled}
    assert set(got) == ids(sent)
    for message in sent:
        received = got[event_id(message)]
        assert received.topic == topic
        assert received.key == message.key
        assert received.value == message.value
        assert dict(received.headers) == dict(message.headers)
        for header in (
            Header.EVENT_ID,
            Header.SOURCE,
            Header.SETTING,
            Header.OCCURRED_AT,
            Header.TRACEPARENT,
        ):
            assert received.headers[header] == message.headers[header], header
        assert received.partition is not None
        assert received.offset is not None
        assert received.origin == f"{topic}/{received.partition}/{received.offset}"


async def scenario_same_key_in_order(env: BusEnv) -> None:
    topic, group = env.unique("order"), env.unique("g")
    keys = [f"patient-{k:02d}" for k in range(20)]
    per_key = 50
    recorder = Recorder()
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic], max_batch=37)
    await env.start(consumer, publisher)

    for seq in range(per_key):  # keys interleaved: one message of every key per call
        await publisher.publish([make(topic, key, {"key": key, "seq": seq}) for key in keys])
    total = len(keys) * per_key
    await eventually(lambda: len(recorder.handled) >= total, env.timeout, f"{total} messages")

    sequences: dict[str, list[int]] = {key: [] for key in keys}
    partitions: dict[str, set[int | None]] = {key: set() for key in keys}
    for message in recorder.handled:
        body = orjson.loads(message.value)
        sequences[body["key"]].append(body["seq"])
        partitions[body["key"]].add(message.partition)
    for key in keys:
        assert sequences[key] == list(range(per_key)), f"{key} out of order: {sequences[key]}"
        assert len(partitions[key]) == 1, f"{key} spread over partitions {partitions[key]}"
    assert len(recorder.batches) > 1  # the work really came in several batches
    assert max(len(batch) for batch in recorder.batches) <= 37


async def scenario_every_group_sees_everything(env: BusEnv) -> None:
    topic = env.unique("groups")
    first, second = Recorder(), Recorder()
    bus_a, bus_b, publisher = env.bus(), env.bus(), env.bus()
    bus_a.subscribe(env.unique("ga"), first, service=SERVICE, topics=[topic])
    bus_b.subscribe(env.unique("gb"), second, service=SERVICE, topics=[topic])
    await env.start(bus_a, bus_b, publisher)

    sent: list[Message] = []
    for call in range(6):
        messages = [make(topic, f"patient-{call}-{i}", {"i": i}) for i in range(10)]
        await publisher.publish(messages)
        sent.extend(messages)
    everything = ids(sent)
    for recorder in (first, second):
        await eventually(
            lambda r=recorder: r.handled_ids() >= everything, env.timeout, "both groups"
        )
    assert first.handled_ids() == everything
    assert second.handled_ids() == everything


async def scenario_group_members_share_partitions(env: BusEnv) -> None:
    topic, group = env.unique("members"), env.unique("g")
    first, second = Recorder(), Recorder()
    member_a, member_b, publisher = env.bus(), env.bus(), env.bus()
    member_a.subscribe(group, first, service=SERVICE, topics=[topic], max_batch=10)
    member_b.subscribe(group, second, service=SERVICE, topics=[topic], max_batch=10)
    await env.start(member_a, member_b, publisher)

    sent: list[Message] = []

    async def publish_round(number: int) -> list[Message]:
        messages = [make(topic, f"patient-{number}-{i}", {"i": i}) for i in range(24)]
        await publisher.publish(messages)
        sent.extend(messages)
        return messages

    # Until both members take part (Kafka: until the group has rebalanced).
    async with asyncio.timeout(env.timeout):
        number = 0
        while not (first.handled and second.handled):
            await publish_round(number)
            number += 1
            await asyncio.sleep(0.2)
    last = await publish_round(number)

    everything = ids(sent)
    await eventually(
        lambda: (first.handled_ids() | second.handled_ids()) >= everything,
        env.timeout,
        "every message handled by one member or the other",
    )
    assert (first.handled_ids() | second.handled_ids()) == everything  # nothing lost
    # Once settled, every partition belongs to one member only.
    last_ids = ids(last)
    partitions_a = {m.partition for m in first.handled if event_id(m) in last_ids}
    partitions_b = {m.partition for m in second.handled if event_id(m) in last_ids}
    assert partitions_a
    assert partitions_b
    assert not partitions_a & partitions_b


async def scenario_transient_failures_are_retried(env: BusEnv) -> None:
    topic, group = env.unique("transient"), env.unique("g")
    recorder = Recorder()
    recorder.fail_next = 2
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic])
    sent = [make(topic, "patient-1", {"i": i}) for i in range(10)]
    with backoff(initial=0.05, jitter=0.05):
        await env.start(consumer, publisher)
        await publisher.publish(sent)
        await eventually(
            lambda: recorder.handled_ids() >= ids(sent), env.timeout, "all handled after retries"
        )

    assert len(recorder.failures) == 2
    assert all(isinstance(error, ConnectionError) for error in recorder.failures)
    # What the failed calls were given came again: nothing was committed in between.
    failed = {event_id(m) for call in recorder.calls[:2] for m in call}
    assert failed
    assert failed <= recorder.handled_ids()
    assert recorder.handled_ids() == ids(sent)
    assert await env.dead_letters(topic) == []


async def scenario_restart_resumes_after_commit(env: BusEnv) -> None:
    topic, group = env.unique("restart"), env.unique("g")
    recorder = Recorder()
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic])
    await env.start(consumer, publisher)

    # One key: one partition, so anything redelivered would come before what is new.
    before = [make(topic, "patient-1", {"phase": 1, "i": i}) for i in range(10)]
    await publisher.publish(before)
    await eventually(lambda: recorder.handled_ids() >= ids(before), env.timeout, "phase 1")
    await env.stop(consumer)

    after = [make(topic, "patient-1", {"phase": 2, "i": i}) for i in range(10)]
    await publisher.publish(after)  # while nobody consumes
    recorder.reset()
    await env.reopen(consumer)
    await eventually(lambda: recorder.handled_ids() >= ids(after), env.timeout, "phase 2")

    assert [event_id(m) for m in recorder.handled] == [event_id(m) for m in after]


async def scenario_stop_while_failing_redelivers(env: BusEnv) -> None:
    topic, group = env.unique("stopfail"), env.unique("g")
    recorder = Recorder()
    recorder.always_fail = True
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic])
    sent = [make(topic, "patient-1", {"i": i}) for i in range(5)]

    # A long back-off that stop must cut short: 60 s before the second call. RETRY_MAX is
    # raised with it, or its default (15 s) would cap the wait at 15 s.
    retry_after = 60.0
    with backoff(initial=retry_after, jitter=0.0, maximum=retry_after):
        await env.start(consumer, publisher)
        await publisher.publish(sent)
        await eventually(lambda: len(recorder.failures) >= 1, env.timeout, "a failed call")
        started = time.monotonic()
        await asyncio.wait_for(env.stop(consumer), timeout=retry_after / 2)
        stop_took = time.monotonic() - started

    # Well under the 60 s back-off, with room for KafkaBus.stop (leaving the group, flushing
    # and closing the transactional producer) on a loaded machine.
    assert stop_took < 20, f"stop waited {stop_took:.1f} s for the back-off"
    assert len(recorder.calls) == 1  # not called again once stopping
    assert recorder.handled == []
    seen = {event_id(m) for call in recorder.calls for m in call}

    recorder.always_fail = False
    recorder.reset()
    await env.reopen(consumer)
    await eventually(
        lambda: recorder.handled_ids() >= ids(sent), env.timeout, "redelivery after restart"
    )
    assert seen <= recorder.handled_ids()  # what the failing handler had was not committed
    assert recorder.handled_ids() == ids(sent)
    assert await env.dead_letters(topic) == []


async def scenario_stop_finishes_batch_in_hand(env: BusEnv) -> None:
    topic, group = env.unique("graceful"), env.unique("g")
    release = asyncio.Event()
    recorder = Recorder()
    in_hand: list[Message] = []

    async def slow(batch: Sequence[Message]) -> None:
        if not in_hand:
            in_hand.extend(batch)
            await release.wait()  # a handler busy when stop comes
        await recorder(batch)

    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, slow, service=SERVICE, topics=[topic])
    await env.start(consumer, publisher)
    first = [make(topic, "patient-1", {"i": i}) for i in range(5)]
    await publisher.publish(first)
    await eventually(lambda: bool(in_hand), env.timeout, "a batch in hand")

    stopping = asyncio.create_task(env.stop(consumer))
    await asyncio.sleep(0.3)
    assert not stopping.done()  # stop waits for the batch in hand
    release.set()
    await asyncio.wait_for(stopping, timeout=10)
    assert ids(in_hand) <= recorder.handled_ids()

    # It was committed: after a restart only what is new arrives (one key: in order).
    recorder.reset()
    later = [make(topic, "patient-1", {"later": True})]
    await publisher.publish(later)
    await env.reopen(consumer)
    await eventually(lambda: recorder.handled_ids() >= ids(later), env.timeout, "new message")
    handled = recorder.handled_ids()
    assert not handled & ids(in_hand)
    assert handled <= ids(first) | ids(later)


def _poison_check(message: Message) -> None:
    body = message.json()  # orjson.JSONDecodeError on bad JSON: permanent
    if isinstance(body, dict) and body.get("poison"):
        raise PermanentError("this message can never be stored")


async def scenario_poison_messages_are_dead_lettered(env: BusEnv) -> None:
    topic, group = env.unique("poison"), env.unique("g")
    source = env.unique("feed")
    recorder = Recorder(check=_poison_check)
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic])
    await env.start(consumer, publisher)

    def poison_make(body: object, value: bytes | None = None) -> Message:
        return make(
            topic, "patient-1", body, source=source, traceparent=new_traceparent(), value=value
        )

    sent = [poison_make({"i": i}) for i in range(10)]
    sent[3] = poison_make({"poison": True})
    sent[7] = poison_make(None, value=b'{"not json')
    bad = {event_id(sent[3]): "PermanentError", event_id(sent[7]): "JSONDecodeError"}
    good = ids(sent) - set(bad)
    await publisher.publish(sent)  # one call, one key: they come as one batch

    await eventually(lambda: recorder.handled_ids() >= good, env.timeout, "the good messages")

    async def both_dead_lettered() -> bool:
        return len(await env.dead_letters(topic)) >= 2

    await eventually_async(both_dead_lettered, env.timeout, "two dead letters")
    assert recorder.handled_ids() == good
    assert any(len(call) > 1 for call in recorder.calls)  # the batch failed as a whole first

    delivered = {event_id(m): m for call in recorder.calls for m in call}
    letters = await env.dead_letters(topic)
    assert sorted(event_id(m) for m in letters) == sorted(bad)
    for letter in letters:
        original = next(m for m in sent if event_id(m) == event_id(letter))
        assert letter.topic == DEADLETTER
        assert letter.value == original.value  # the original bytes
        assert letter.key == source
        assert letter.headers[Header.ERROR].startswith(bad[event_id(letter)] + ":")
        assert letter.headers[Header.SERVICE] == SERVICE
        assert letter.headers[Header.SOURCE] == source
        assert letter.headers[Header.ORIGIN] == delivered[event_id(letter)].origin
        assert letter.headers[Header.ORIGIN].startswith(f"{topic}/")
        assert letter.headers[Header.EVENT_ID] == original.headers[Header.EVENT_ID]
        assert letter.headers[Header.TRACEPARENT] == original.headers[Header.TRACEPARENT]

    # Consumption goes on after the bad messages.
    later = [make(topic, "patient-1", {"later": i}, source=source) for i in range(3)]
    await publisher.publish(later)
    await eventually(lambda: recorder.handled_ids() >= ids(later), env.timeout, "later messages")
    assert len(await env.dead_letters(topic)) == 2


async def scenario_publish_is_all_or_nothing(env: BusEnv) -> None:
    topic, group = env.unique("atomic"), env.unique("g")
    recorder = Recorder()
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic])
    await env.start(consumer, publisher)

    # One key throughout: one partition, so the final message is handled after anything
    # published before it.
    refused_value = [
        make(topic, "patient-1", {"call": "a", "i": 0}),
        make(topic, "patient-1", {"call": "a", "i": 1}),
        Message(topic=topic, key="patient-1", value="not bytes"),  # type: ignore[arg-type]
    ]
    refused_topic = [
        make(topic, "patient-1", {"call": "b", "i": 0}),
        make("not a topic!", "patient-1", {"call": "b", "i": 1}),
    ]
    good = [make(topic, "patient-1", {"call": "c", "i": i}) for i in range(3)]
    outcomes = await asyncio.gather(
        publisher.publish(refused_value),
        publisher.publish(good),
        publisher.publish(refused_topic),
        return_exceptions=True,
    )
    assert isinstance(outcomes[0], TypeError)
    assert outcomes[1] is None
    assert isinstance(outcomes[2], ValueError)
    assert is_permanent(outcomes[0])
    assert is_permanent(outcomes[2])

    final = [make(topic, "patient-1", {"call": "d"})]
    await publisher.publish(final)
    await eventually(lambda: recorder.handled_ids() >= ids(final), env.timeout, "final message")
    assert recorder.handled_ids() == ids(good) | ids(final)
    assert not recorder.handled_ids() & (ids(refused_value[:2]) | ids(refused_topic[:1]))


async def scenario_concurrent_publish_calls(env: BusEnv) -> None:
    topic, group = env.unique("concurrent"), env.unique("g")
    recorder = Recorder()
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic])
    await env.start(consumer, publisher)

    calls = [[make(topic, f"patient-{c}", {"c": c, "i": i}) for i in range(3)] for c in range(30)]
    await asyncio.gather(*(publisher.publish(call) for call in calls))
    everything = set().union(*(ids(call) for call in calls))
    await eventually(lambda: recorder.handled_ids() >= everything, env.timeout, "all calls")
    assert recorder.handled_ids() == everything
    for call in calls:  # each call's messages (one key) in the order given
        order = [event_id(m) for m in recorder.handled if event_id(m) in ids(call)]
        assert order == [event_id(m) for m in call]


async def scenario_pattern_picks_up_new_topics(env: BusEnv) -> None:
    prefix = env.unique("pat")
    # No anchors: the bus must still match whole topic names only.
    pattern = re.escape(prefix) + r"\.[A-Za-z]+"
    early, late, lookalike = f"{prefix}.Alpha", f"{prefix}.Beta", f"{prefix}.Gamma2"
    recorder = Recorder()
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(env.unique("g"), recorder, service=SERVICE, pattern=pattern)
    await env.create_topics(early)
    await env.start(consumer, publisher)

    first = [make(early, "patient-1", {"topic": "early"})]
    await publisher.publish(first)
    await eventually(lambda: recorder.handled_ids() >= ids(first), env.timeout, "early topic")

    # Topics created after the consumer started.
    await env.create_topics(lookalike)
    ignored = [make(lookalike, "patient-1", {"topic": "lookalike"})]
    await publisher.publish(ignored)
    await env.create_topics(late)
    second = [make(late, "patient-1", {"topic": "late", "n": 1})]
    await publisher.publish(second)
    # Kafka: a metadata refresh (up to METADATA_MAX_AGE_MS, 3 s), a rejoin of the group, a
    # fetch from the new topic's start and a poll: a few seconds, more on a loaded machine.
    await eventually(lambda: recorder.handled_ids() >= ids(second), env.timeout, "new topic")
    third = [make(late, "patient-1", {"topic": "late", "n": 2})]
    await publisher.publish(third)
    await eventually(lambda: recorder.handled_ids() >= ids(third), env.timeout, "more")

    assert {m.topic for m in recorder.handled} == {early, late}
    assert not recorder.handled_ids() & ids(ignored)


async def scenario_handler_sees_message_trace(env: BusEnv) -> None:
    topic, group = env.unique("trace"), env.unique("g")
    recorder = Recorder()
    consumer, publisher = env.bus(), env.bus()
    consumer.subscribe(group, recorder, service=SERVICE, topics=[topic], max_batch=1)
    # The consumer must not leak the context it was started in into handlers.
    outer = current_traceparent.set(new_traceparent())
    try:
        await env.start(consumer, publisher)
    finally:
        current_traceparent.reset(outer)

    sent = [make(topic, "patient-1", {"i": i}, traceparent=new_traceparent()) for i in range(5)]
    # published with no trace in hand: event_headers starts a trace of its own
    sent.append(make(topic, "patient-1", {"i": "untraced"}))
    await publisher.publish(sent)
    await eventually(lambda: recorder.handled_ids() >= ids(sent), env.timeout, "traced messages")

    assert all(len(call) == 1 for call in recorder.calls)
    assert len(recorder.traces) == len(sent)
    for header, seen in recorder.traces:
        assert seen == header
    assert trace_id(recorder.traces[-1][0]) is not None
    assert len({header for header, _ in recorder.traces}) == len(sent)


async def scenario_ping(env: BusEnv) -> None:
    bus = env.bus()
    with pytest.raises(RuntimeError):
        await bus.ping()
    await env.start(bus)
    await bus.ping()
    await env.stop(bus)
    with pytest.raises(RuntimeError):
        await bus.ping()


SCENARIOS: list[Callable[[BusEnv], Awaitable[None]]] = [
    scenario_round_trip_keeps_headers,
    scenario_same_key_in_order,
    scenario_every_group_sees_everything,
    scenario_group_members_share_partitions,
    scenario_transient_failures_are_retried,
    scenario_restart_resumes_after_commit,
    scenario_stop_while_failing_redelivers,
    scenario_stop_finishes_batch_in_hand,
    scenario_poison_messages_are_dead_lettered,
    scenario_publish_is_all_or_nothing,
    scenario_concurrent_publish_calls,
    scenario_pattern_picks_up_new_topics,
    scenario_handler_sees_message_trace,
    scenario_ping,
]


def scenario_id(scenario: Callable[[BusEnv], Awaitable[None]]) -> str:
    return scenario.__name__.removeprefix("scenario_")


# ----------------------------------------------------------------------------- in-process


class MemoryEnv(BusEnv):
    timeout = 5.0

    def __init__(self) -> None:
        self.shared = InProcessBus(partitions=4)

    def bus(self) -> Bus:
        return self.shared

    async def start(self, *buses: Bus) -> None:
        for bus in buses:
            await bus.start()  # starting a started bus does nothing

    async def stop(self, bus: Bus) -> None:
        await bus.stop()

    async def reopen(self, bus: Bus) -> Bus:
        await bus.start()
        return bus

    async def create_topics(self, *topics: str) -> None:
        """In-process topics exist from their first message."""

    async def dead_letters(self, topic: str) -> list[Message]:
        partitions = self.shared._topics.get(DEADLETTER, [])
        return [
            message
            for partition in partitions
            for message in partition.messages
            if message.headers.get(Header.ORIGIN, "").startswith(f"{topic}/")
        ]


@pytest.fixture
async def memory_env() -> AsyncIterator[MemoryEnv]:
    env = MemoryEnv()
    yield env
    await env.shared.stop()


@pytest.mark.parametrize("scenario", SCENARIOS, ids=scenario_id)
async def test_contract(
    memory_env: MemoryEnv, scenario: Callable[[BusEnv], Awaitable[None]]
) -> None:
    await scenario(memory_env)


# ------------------------------------------------------------------ in-process only


async def test_wait_idle_includes_what_handlers_publish() -> None:
    bus = InProcessBus()
    downstream = Recorder()

    async def relay(batch: Sequence[Message]) -> None:
        await bus.publish([make("derived", m.key, orjson.loads(m.value)) for m in batch])

    bus.subscribe("relay", relay, service=SERVICE, topics=["source"])
    bus.subscribe("sink", downstream, service=SERVICE, topics=["derived"])
    await bus.start()
    try:
        await bus.publish([make("source", f"p{i}", {"i": i}) for i in range(20)])
        async with asyncio.timeout(5):
            await bus.wait_idle()
        assert bus.pending() == 0
        assert len(downstream.handled) == 20
    finally:
        await bus.stop()


async def test_late_group_after_trim_does_not_hang_wait_idle() -> None:
    bus = InProcessBus()
    early, late = Recorder(), Recorder()
    bus.subscribe("early", early, service=SERVICE, topics=["t"])
    await bus.start()
    try:
        await bus.publish([make("t", "p", {"i": i}) for i in range(5)])
        async with asyncio.timeout(5):
            await bus.wait_idle()  # every reader passed: the log is trimmed
        bus.subscribe("late", late, service=SERVICE, topics=["t"])
        assert bus.pending() == 0  # nothing the late group can still read
        await bus.publish([make("t", "p", {"i": 5})])
        async with asyncio.timeout(5):
            await bus.wait_idle()
        assert len(late.handled) == 1
        assert len(early.handled) == 6
    finally:
        await bus.stop()


async def test_mixed_batch_has_no_single_trace() -> None:
    bus = InProcessBus(partitions=1)
    recorder = Recorder()
    bus.subscribe("g", recorder, service=SERVICE, topics=["t"])
    await bus.publish([make("t", "p", {"i": i}, traceparent=new_traceparent()) for i in range(3)])
    await bus.start()
    try:
        async with asyncio.timeout(5):
            await bus.wait_idle()
        assert [len(call) for call in recorder.calls] == [3]
        assert all(seen is None for _, seen in recorder.traces)
    finally:
        await bus.stop()


async def test_published_headers_are_copied() -> None:
    bus = InProcessBus()
    recorder = Recorder()
    bus.subscribe("g", recorder, service=SERVICE, topics=["t"])
    message = make("t", "p", {"i": 1})
    headers = dict(message.headers)
    await bus.publish([Message("t", "p", message.value, headers)])
    headers[Header.SOURCE] = "changed-after-publish"
    await bus.start()
    try:
        async with asyncio.timeout(5):
            await bus.wait_idle()
        assert recorder.handled[0].headers[Header.SOURCE] == "feed-test"
    finally:
        await bus.stop()


async def test_a_failing_batch_is_not_committed_while_it_fails() -> None:
    bus = InProcessBus()
    recorder = Recorder()
    recorder.always_fail = True
    bus.subscribe("g", recorder, service=SERVICE, topics=["t"])
    with backoff(initial=0.01, jitter=0.0):
        await bus.start()
        try:
            await bus.publish([make("t", "p", {"i": i}) for i in range(3)])
            await eventually(lambda: len(recorder.failures) >= 3, 5, "three failures")
            assert bus.pending() == 3
            recorder.always_fail = False
            async with asyncio.timeout(5):
                await bus.wait_idle()
            assert len(recorder.handled) == 3
        finally:
            await bus.stop()


def test_subscription_rules() -> None:
    bus = InProcessBus()

    async def handler(batch: Sequence[Message]) -> None:
        return None

    with pytest.raises(ValueError, match="not both or neither"):
        bus.subscribe("g", handler, service=SERVICE)
    with pytest.raises(ValueError, match="not both or neither"):
        bus.subscribe("g", handler, service=SERVICE, topics=["t"], pattern="t.*")
    with pytest.raises(ValueError, match="max_batch"):
        bus.subscribe("g", handler, service=SERVICE, topics=["t"], max_batch=0)
    assert bus.subscriptions == []


def test_permanent_errors() -> None:
    assert is_permanent(PermanentError("x"))
    assert is_permanent(orjson.JSONDecodeError("bad", "{", 0))
    assert is_permanent(ValueError("x"))
    assert is_permanent(KeyError("x"))
    assert not is_permanent(ConnectionError("x"))
    assert not is_permanent(TimeoutError())
    assert not is_permanent(RuntimeError("x"))


def test_create_bus() -> None:
    embedded = Settings(mode="embedded", kafka_bootstrap=None)
    assert isinstance(create_bus(embedded, "svc"), InProcessBus)
    kafka = create_bus(Settings(mode="distributed", kafka_bootstrap="127.0.0.1:1"), "svc")
    assert isinstance(kafka, KafkaBus)
    assert kafka.bootstrap == "127.0.0.1:1"
    with pytest.raises(ValueError, match="KAFKA_BOOTSTRAP"):
        create_bus(Settings(mode="distributed", kafka_bootstrap=None), "svc")
