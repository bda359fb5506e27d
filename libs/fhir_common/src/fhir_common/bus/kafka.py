"""The Kafka bus (aiokafka): what distributed mode runs on.

* One transactional, idempotent producer (acks=all) per process. Concurrent ``publish`` calls
  are gathered into one Kafka transaction (group commit): each call stays all-or-nothing,
  while the transaction cost is shared under load.
* Consumers read committed data only, commit offsets by hand after the handler succeeded,
  and leave their group cleanly on shutdown (uvicorn turns SIGTERM into the lifespan exit
  that calls ``stop``).
* Topics named by subscriptions and by ``ensure_topics`` are created up front; pattern
  subscriptions (``fhir.*``) pick up topics created later within ``metadata_max_age_ms``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, TopicAlreadyExistsError

from fhir_common.bus.base import Bus, Subscription, deliver
from fhir_common.events import DEADLETTER, RECORD_CHANGES, Message
from fhir_common.observability import MESSAGES_PUBLISHED

log = logging.getLogger(__name__)

METADATA_MAX_AGE_MS = 3000


@dataclass
class _Pending:
    messages: Sequence[Message]
    done: asyncio.Future[None]


class KafkaBus(Bus):
    def __init__(self, bootstrap: str, *, client_id: str, partitions: int = 6) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.client_id = client_id
        self.partitions = partitions
        self._producer: AIOKafkaProducer | None = None
        self._pending: asyncio.Queue[_Pending] = asyncio.Queue()
        self._flusher: asyncio.Task[None] | None = None
        self._consumers: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self._stopping.clear()
        await self.ensure_topics([DEADLETTER, RECORD_CHANGES])
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=True,
            transactional_id=f"{self.client_id}-{uuid.uuid4()}",
            linger_ms=2,
        )
        await self._producer.start()
        self._flusher = asyncio.create_task(self._flush_forever(), name="kafka-publisher")
        self._started = True
        for subscription in self.subscriptions:
            await self._start_consumer(subscription)

    async def stop(self) -> None:
        self._stopping.set()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self._consumers.clear()
        if self._flusher:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._producer:
            await self._producer.stop()
        self._started = False

    async def ping(self) -> None:
        if not self._producer:
            raise RuntimeError("Kafka producer not started")
        for task in self._consumers:
            if task.done() and not task.cancelled() and task.exception():
                raise RuntimeError(f"consumer {task.get_name()} died: {task.exception()!r}")
        await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout=5)

    def _on_subscribe(self, subscription: Subscription) -> None:
        if self._started:
            self._consumers.append(asyncio.create_task(self._consume_later(subscription)))

    async def _consume_later(self, subscription: Subscription) -> None:
        await self._start_consumer(subscription)

    async def ensure_topics(self, topics: Iterable[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(name=t, num_partitions=self.partitions, replication_factor=1)
                for t in sorted(set(topics) - existing)
            ]
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(wanted)
        finally:
            await admin.close()

    # -- publishing ------------------------------------------------------------------------
    async def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if self._producer is None:
            raise RuntimeError("Kafka bus not started")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._pending.put(_Pending(messages, done))
        await done

    async def _flush_forever(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty() and len(batch) < 1000:
                batch.append(self._pending.get_nowait())
            try:
                await self._send_in_transaction(batch)
            except Exception as error:
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_exception(error)
            else:
                for pending in batch:
                    if not pending.done.done():
                        pending.done.set_result(None)

    async def _send_in_transaction(self, batch: Sequence[_Pending]) -> None:
        assert self._producer is not None
        async with self._producer.transaction():
            for pending in batch:
                for message in pending.messages:
                    await self._producer.send(
                        message.topic,
                        value=message.value,
                        key=message.key.encode(),
                        headers=[(k, v.encode()) for k, v in message.headers.items()],
                    )
        for pending in batch:
            for message in pending.messages:
                MESSAGES_PUBLISHED.labels(message.topic).inc()

    # -- consuming -------------------------------------------------------------------------
    async def _start_consumer(self, subscription: Subscription) -> None:
        if subscription.topics:
            await self.ensure_topics(subscription.topics)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            group_id=subscription.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
            max_poll_records=subscription.max_batch,
        )
        if subscription.pattern:
            consumer.subscribe(pattern=subscription.pattern)
        else:
            consumer.subscribe(topics=list(subscription.topics))
        await consumer.start()
        task = asyncio.create_task(
            self._consume(consumer, subscription), name=f"kafka:{subscription.group}"
        )
        self._consumers.append(task)

    async def _consume(self, consumer: AIOKafkaConsumer, subscription: Subscription) -> None:
        try:
            while not self._stopping.is_set():
                fetched = await consumer.getmany(timeout_ms=500, max_records=subscription.max_batch)
                if not fetched:
                    continue
                batch = [_message(r) for records in fetched.values() for r in records]
                try:
                    await deliver(self, subscription, batch, self._stopping)
                except Exception:
                    if self._stopping.is_set():
                        return  # not committed: another member or the next start redelivers
                    raise
                await _commit(consumer, fetched)
        except Exception:
            log.exception("Kafka consumer stopped on error", extra={"group": subscription.group})
            raise
        finally:
            await consumer.stop()


async def _commit(
    consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list[ConsumerRecord]]
) -> None:
    offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items() if records}
    try:
        await consumer.commit(offsets)
    except CommitFailedError:
        # The group rebalanced while we worked: the new owner will see these again, and
        # every handler is idempotent, so this is duplication, never loss.
        log.warning("offset commit failed after rebalance; messages will be redelivered")


def _message(record: ConsumerRecord) -> Message:
    return Message(
        topic=record.topic,
        key=record.key.decode() if record.key else "",
        value=record.value or b"",
        headers={k: v.decode() for k, v in (record.headers or ())},
        partition=record.partition,
        offset=record.offset,
    )
