"""The Kafka bus (aiokafka): what distributed mode runs on.

* One transactional, idempotent producer (acks=all) per process, its transactional id stable
  per replica and unique among live ones (``fhir_common.bus.identity``): a restart fences the
  transaction a killed process left open at once. Concurrent ``publish`` calls
  are gathered into one Kafka transaction (group commit): each call stays all-or-nothing,
  while the transaction cost is shared under load. Every send is acknowledged before the
  transaction commits, so a record the broker refuses aborts the transaction instead of
  being silently left out of it. If a shared transaction fails, each call is retried in a
  transaction of its own, so one bad call does not fail the good calls it was gathered with;
  after any failure the producer is replaced (a refused record leaves aiokafka's idempotent
  sequence numbers out of step with the broker's).
* A transaction's records are grouped per partition into record batches built by aiokafka's
  batch API (``create_batch``/``send_batch``): far less CPU a message than ``send``, which
  makes a future and an accumulator append for each. The partition is the one Kafka's default
  partitioner picks (murmur2 of the key, aiokafka's own), as ``send`` and Java clients do, so
  one key keeps one partition and one order whoever produced it.
* Consumers read committed data only, commit offsets by hand after the handler succeeded,
  and leave their group cleanly on shutdown (uvicorn turns SIGTERM into the lifespan exit
  that calls ``stop``). A batch that could not be finished is sought back to and tried again
  after a pause, never skipped. A rebalance that takes partitions away during a batch is
  normal: what is still ours is committed, the rest is redelivered to the new owner.
* Topics named by subscriptions and by ``ensure_topics`` are created up front; pattern
  subscriptions (``fhir.*``) pick up topics created later within ``metadata_max_age_ms``. A
  pattern must match the whole topic name, as in the in-process bus and in Java clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    BrokerResponseError,
    CommitFailedError,
    IllegalStateError,
    MessageSizeTooLargeError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.partitioner import DefaultPartitioner

from fhir_common.bus.base import Bus, Subscription, check_messages, deliver, wait_or_stop
from fhir_common.bus.identity import TransactionalIdClaim, claim_transactional_id
from fhir_common.events import DEADLETTER, FHIR_TOPIC_PATTERN, RECORD_CHANGES, Message
from fhir_common.observability import MESSAGES_PUBLISHED

log = logging.getLogger(__name__)

METADATA_MAX_AGE_MS = 3000
# A refused 50 MB bundle must still fit on the dead-letter topic with its error headers; the
# broker's message.max.bytes (deploy/kafka/server.properties, docker-compose.yml) matches.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Size of the record batches we build (aiokafka's max_batch_size): large enough that a request
# carries many messages a partition, below the 1 MB max.message.bytes of a topic left at
# Kafka's default (the broker checks a whole batch against it). A larger message gets a batch
# of its own.
BATCH_BYTES = 512 * 1024
HEARTBEAT_INTERVAL_MS = 1000  # notice rebalances (members joining or leaving) within a second
MAX_CALLS_PER_TRANSACTION = 1000
STOP_TIMEOUT = 30.0  # seconds ``stop`` waits for the last publications
PAUSE_AFTER_FAILURE = 1.0  # seconds a consumer waits before trying an unfinished batch again


@dataclass
class _Pending:
    messages: Sequence[Message]
    done: asyncio.Future[None]


class KafkaBus(Bus):
    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str,
        partitions: int = 6,
        group_prefix: str = "",
        instance_id: str | None = None,
    ) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.client_id = client_id
        # Deployments (or test runs) sharing one cluster keep their consumer groups apart.
        self.group_prefix = group_prefix
        self.partitions = partitions
        # Names this replica's transactional id (fhir_common.bus.identity); claimed on start.
        self.instance_id = instance_id
        self._claim: TransactionalIdClaim | None = None
        self._producer: AIOKafkaProducer | None = None
        self._pending: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._flusher: asyncio.Task[None] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._started = False
        self._accepting = False  # publish() takes new calls

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._stopping.clear()
        await self.ensure_topics([DEADLETTER, RECORD_CHANGES])
        self._claim = self._claim or claim_transactional_id(self.client_id, self.instance_id)
        try:
            await self._open_producer()
        except BaseException:
            self._release_claim()
            raise
        self._flusher = asyncio.create_task(self._flush_forever(), name="kafka-publisher")
        self._started = True
        self._accepting = True
        try:
            for subscription in self.subscriptions:
                consumer = await self._open_consumer(subscription)
                self._spawn_consumer(subscription, consumer)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self._stopping.set()
        # Consumers first: the batch in hand may still publish (its output, dead letters).
        while running := [task for task in self._consumers if not task.done()]:
            await asyncio.gather(*running, return_exceptions=True)
        self._consumers.clear()
        self._accepting = False
        if self._flusher:
            self._pending.put_nowait(None)  # flush what is queued, then end
            try:
                await asyncio.wait_for(self._flusher, timeout=STOP_TIMEOUT)
            except TimeoutError:
                log.error("Kafka publisher did not finish in time; pending publications fail")
            except Exception:
                log.exception("Kafka publisher failed")
            self._flusher = None
        while not self._pending.empty():
            pending = self._pending.get_nowait()
            if pending is not None and not pending.done.done():
                pending.done.set_exception(RuntimeError("Kafka bus stopped"))
        await self._close_producer()
        self._release_claim()
        self._started = False

    @property
    def transactional_id(self) -> str | None:
        """This replica's transactional id while the bus runs."""
        return self._claim.transactional_id if self._claim else None

    def _release_claim(self) -> None:
        claim, self._claim = self._claim, None
        if claim is not None:
            claim.release()

    async def ping(self) -> None:
        if not self._started:
            raise RuntimeError("Kafka bus not started")
        if self._flusher is None or self._flusher.done():
            raise RuntimeError("Kafka publisher is not running")
        for task in self._consumers:
            if task.done() and not task.cancelled() and task.exception():
                raise RuntimeError(f"consumer {task.get_name()} died: {task.exception()!r}")
        async with asyncio.timeout(5):
            if self._producer is not None:
                await self._producer.client.fetch_all_metadata()
                return
            # The producer is being replaced after a failed transaction: is the broker there?
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
            try:
                await admin.start()
                await admin.describe_cluster()
            finally:
                await admin.close()

    def _on_subscribe(self, subscription: Subscription) -> None:
        if self._started and not self._stopping.is_set():
            self._spawn_consumer(subscription, None)

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        """Create the topics that do not exist yet (``partitions`` partitions each)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(name=t, num_partitions=self.partitions, replication_factor=1)
                for t in sorted(set(topics) - existing)
            ]
            if wanted:
                response = await admin.create_topics(wanted)
                for topic, code, message in response.topic_errors:
                    error = for_code(code)
                    if code and error is not TopicAlreadyExistsError:
                        raise error(f"cannot create topic {topic}: {message}")
        finally:
            await admin.close()

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if not self._accepting:
            raise RuntimeError("Kafka bus not started")
        check_messages(messages)  # refuse a malformed call before it can spoil a transaction
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(_Pending(messages, done))
        await done

    async def _flush_forever(self) -> None:
        closing = False
        while not closing:
            first = await self._pending.get()
            if first is None:
                break
            batch = [first]
            while not self._pending.empty() and len(batch) < MAX_CALLS_PER_TRANSACTION:
                pending = self._pending.get_nowait()
                if pending is None:
                    closing = True
                    break
                batch.append(pending)
            await self._flush([p for p in batch if not p.done.done()])

    async def _flush(self, batch: Sequence[_Pending]) -> None:
        """Publish the calls in ``batch`` in one transaction, or each in its own."""
        if not batch:
            return
        try:
            await self._send_in_transaction(batch)
        except Exception as error:
            await self._close_producer()
            if len(batch) == 1 or not _refused(error):
                # One call, or the broker is away: every call fails, its caller decides.
                for pending in batch:
                    _settle(pending, error)
                return
            log.warning(
                "group transaction failed; publishing its calls one by one",
                extra={"calls": len(batch), "error": repr(error)},
            )
            await self._flush_one_by_one(batch)
        else:
            for pending in batch:
                _settle(pending, None)

    async def _flush_one_by_one(self, batch: Sequence[_Pending]) -> None:
        for number, pending in enumerate(batch):
            try:
                await self._send_in_transaction([pending])
            except Exception as error:
                await self._close_producer()
                _settle(pending, error)
                if not _refused(error):
                    for rest in batch[number + 1 :]:
                        _settle(rest, error)
                    return
            else:
                _settle(pending, None)

    async def _send_in_transaction(self, batch: Sequence[_Pending]) -> None:
        producer = self._producer or await self._open_producer()
        messages = [message for pending in batch for message in pending.messages]
        by_partition = await _by_partition(producer, messages)
        async with producer.transaction():
            delivered: list[asyncio.Future[object]] = []
            for (topic, partition), records in by_partition.items():
                delivered += await _send_partition(producer, topic, partition, records)
            # aiokafka commits a transaction even if some of its records were refused:
            # wait for every acknowledgement, so that a refusal aborts the transaction.
            outcomes = await asyncio.gather(*delivered, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        for topic, count in Counter(message.topic for message in messages).items():
            MESSAGES_PUBLISHED.labels(topic).inc(count)

    async def _open_producer(self) -> AIOKafkaProducer:
        if self._claim is None:  # never a producer without its transactional id
            raise RuntimeError("Kafka bus not started")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            transactional_id=self.transactional_id,
            linger_ms=2,
            max_request_size=MAX_MESSAGE_BYTES,
            max_batch_size=BATCH_BYTES,
        )
        await producer.start()
        self._producer = producer
        return producer

    async def _close_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception:
                log.warning("error while closing the Kafka producer", exc_info=True)

    # -- consuming -------------------------------------------------------------------------
    async def _open_consumer(self, subscription: Subscription) -> AIOKafkaConsumer:
        if subscription.topics:
            await self.ensure_topics(subscription.topics)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=f"{self.group_prefix}{subscription.group}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
            max_poll_records=subscription.max_batch,
            max_partition_fetch_bytes=MAX_MESSAGE_BYTES,
            fetch_max_bytes=MAX_MESSAGE_BYTES,
        )
        if subscription.pattern:
            # aiokafka only anchors a pattern at the start; match whole names like Java does.
            consumer.subscribe(pattern=rf"(?:{subscription.pattern})\Z")
        else:
            consumer.subscribe(topics=list(subscription.topics))
        await consumer.start()
        return consumer

    def _spawn_consumer(
        self, subscription: Subscription, consumer: AIOKafkaConsumer | None
    ) -> None:
        task = asyncio.create_task(
            self._consume(subscription, consumer), name=f"kafka:{subscription.group}"
        )
        self._consumers.append(task)

    async def _consume(self, subscription: Subscription, consumer: AIOKafkaConsumer | None) -> None:
        group = subscription.group
        if consumer is None:
            try:
                consumer = await self._open_consumer(subscription)
            except Exception:
                log.exception("Kafka consumer could not start", extra={"group": group})
                raise
        try:
            while not self._stopping.is_set():
                try:
                    fetched = await consumer.getmany(
                        timeout_ms=500, max_records=subscription.max_batch
                    )
                except Exception:
                    log.exception("Kafka fetch failed", extra={"group": group})
                    await wait_or_stop(self._stopping, PAUSE_AFTER_FAILURE)
                    continue
                if not fetched:
                    continue
                batch = [_message(r) for records in fetched.values() for r in records]
                try:
                    await deliver(self, subscription, batch, self._stopping)
                except Exception:
                    if self._stopping.is_set():
                        return  # not committed: another member or the next start redelivers
                    # Dead-lettering failed: go back to the batch and try it again later.
                    log.exception("Kafka consumer batch failed", extra={"group": group})
                    _rewind(consumer, fetched)
                    await wait_or_stop(self._stopping, PAUSE_AFTER_FAILURE)
                    continue
                await _commit(consumer, fetched)
        finally:
            await consumer.stop()


def _refused(error: BaseException) -> bool:
    """Did the broker (or the client's own checks) refuse a record for what it is?

    Then only the call holding it fails; other errors (broker away, time-outs, fencing) would
    fail any call just the same.
    """
    return isinstance(error, BrokerResponseError) and not error.retriable


# A record as aiokafka's batch builder takes it: key, value, headers.
_Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


async def _by_partition(
    producer: AIOKafkaProducer, messages: Sequence[Message]
) -> dict[tuple[str, int], list[_Record]]:
    """``messages`` as records, grouped by the partition each goes to, in order within each."""
    partitions: dict[str, tuple[int, ...]] = {}
    grouped: dict[tuple[str, int], list[_Record]] = {}
    # The messages of one call usually share one headers mapping: encode it once. (Keyed by
    # identity: every mapping stays alive, in ``messages``, as long as this dict.)
    encoded: dict[int, list[tuple[str, bytes]]] = {}
    for message in messages:
        topic = message.topic
        if topic not in partitions:
            # Waits for the topic's metadata (the broker creates a new topic on this request).
            partitions[topic] = tuple(sorted(await producer.partitions_for(topic)))
        key = message.key.encode()
        headers = encoded.get(id(message.headers))
        if headers is None:
            headers = [(name, value.encode()) for name, value in message.headers.items()]
            encoded[id(message.headers)] = headers
        record = (key, message.value, headers)
        _check_size(topic, record)
        grouped.setdefault((topic, _partition_of(key, partitions[topic])), []).append(record)
    return grouped


_PARTITIONER = DefaultPartitioner()


@functools.lru_cache(maxsize=65536)
def _partition_of(key: bytes, partitions: tuple[int, ...]) -> int:
    """Kafka's default partitioner, the one ``send`` uses: murmur2 of the key, as in Java.

    Cached: aiokafka's murmur2 is pure Python, and a patient's key comes again and again.
    """
    every = list(partitions)
    return int(_PARTITIONER(key, every, every))


def _check_size(topic: str, record: _Record) -> None:
    # ``send`` refused an oversized record before it left; a batch would only learn it from
    # the broker, so refuse it here the same way (a refusal of this call alone).
    key, value, headers = record
    size = len(key) + len(value) + sum(len(name) + len(data) for name, data in headers)
    if size > MAX_MESSAGE_BYTES:
        raise MessageSizeTooLargeError(
            f"a {size}-byte message on {topic} exceeds {MAX_MESSAGE_BYTES} bytes"
        )


async def _send_partition(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Sequence[_Record]
) -> list[asyncio.Future[object]]:
    """Queue ``records`` for one partition as record batches; their delivery futures."""
    delivered: list[asyncio.Future[object]] = []
    batch = producer.create_batch()
    for key, value, headers in records:
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            # Full: send it, and start the next with this record (an empty batch takes any).
            delivered.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None, headers=headers)
    delivered.append(await producer.send_batch(batch, topic, partition=partition))
    return delivered


def _settle(pending: _Pending, error: BaseException | None) -> None:
    if pending.done.done():
        return
    if error is None:
        pending.done.set_result(None)
    else:
        pending.done.set_exception(error)


async def _commit(
    consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[ConsumerRecord]]
) -> None:
    """Commit what the batch read of the partitions still ours; the rest is redelivered.

    A rebalance while the batch was handled may have given some of its partitions to another
    member (``position`` and ``commit`` refuse those with ``IllegalStateError``), or may be
    under way (``CommitFailedError``). Either way the new owner starts from the last commit
    and sees those messages again; every handler is idempotent, so this is duplication,
    never loss, and this consumer goes on with what it now owns.
    """
    try:
        assigned = consumer.assignment()
        # The consumer's position, as Kafka's own clients commit: past the last record handed
        # out and past a transaction's commit marker after it, so a caught-up group shows no lag.
        offsets = {
            tp: max(records[-1].offset + 1, await consumer.position(tp))
            for tp, records in fetched.items()
            if records and tp in assigned
        }
        if offsets:
            await consumer.commit(offsets)
    except (CommitFailedError, IllegalStateError) as error:
        log.warning(
            "offset commit skipped after a rebalance; messages will be redelivered",
            extra={"error": repr(error)},
        )
        return
    if len(offsets) < len(fetched):
        log.info(
            "partitions revoked during a batch; their messages will be redelivered",
            extra={
                "revoked": sorted(
                    f"{tp.topic}/{tp.partition}" for tp in fetched.keys() - offsets.keys()
                )
            },
        )


def _rewind(
    consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[ConsumerRecord]]
) -> None:
    for tp, records in fetched.items():
        if records:
            # A partition revoked meanwhile is re-read from the commit by its new owner.
            with contextlib.suppress(Exception):
                consumer.seek(tp, records[0].offset)


def _message(record: ConsumerRecord) -> Message:
    # Foreign producers may send anything: never let a header or key kill the consumer.
    return Message(
        topic=record.topic,
        key=record.key.decode(errors="replace") if record.key else "",
        value=record.value or b"",
        headers={k: (v or b"").decode(errors="replace") for k, v in (record.headers or ())},
        partition=record.partition,
        offset=record.offset,
    )


async def fhir_partitions(bootstrap: str) -> list[TopicPartition]:
    """Every partition of every ``fhir.<Type>`` topic, as the broker describes them now (the
    admin client: a consumer's metadata can still be empty)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if re.fullmatch(FHIR_TOPIC_PATTERN, t)]
        described = await admin.describe_topics(topics) if topics else []
        return [
            TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]
        ]
    finally:
        await admin.close()


async def start_groups_at_end(bootstrap: str, groups: Sequence[str]) -> None:
    """Commit ``groups``' offsets at the current end of every ``fhir.*`` topic, so that new
    groups (of a test or benchmark run on a shared broker) see only what is published from now
    on instead of replaying every earlier run's messages. Topics created later are read from
    their start, as usual."""
    partitions = await fhir_partitions(bootstrap)
    if not partitions:
        return
    for group in groups:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            await consumer.commit(await consumer.end_offsets(partitions))
        finally:
            await consumer.stop()
