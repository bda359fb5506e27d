"""The record's own view of how far it has read each Kafka topic partition.

``consumer_positions`` is written with every batch (``versioning``): a batch delivered again
after a crash is recognised message by message. It is only right for the log it was written
from: if the topics are deleted and created again, their offsets start again at 0 and would be
taken for messages already stored. At start-up, positions beyond the end of their partition (or
of topics that are gone) are dropped, with a warning.
"""

from __future__ import annotations

import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import delete, select

from fhir_common.db import Database
from record.tables import consumer_positions

log = logging.getLogger(__name__)


async def forget_positions_beyond_the_log(db: Database, bootstrap: str) -> int:
    """Drop stored positions the broker's log does not reach; returns how many."""
    async with db.sessions() as session:
        stored = {
            (r[0], r[1]): r[2]
            for r in await session.execute(
                select(
                    consumer_positions.c.topic,
                    consumer_positions.c.partition,
                    consumer_positions.c.offset,
                )
            )
        }
    if not stored:
        return 0
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        existing = await consumer.topics()
        present = [TopicPartition(t, p) for (t, p) in stored if t in existing]
        ends = await consumer.end_offsets(present) if present else {}
    finally:
        await consumer.stop()
    stale = [
        (t, p)
        for (t, p), offset in stored.items()
        if TopicPartition(t, p) not in ends or offset >= ends[TopicPartition(t, p)]
    ]
    if stale:
        async with db.transaction() as session:
            for topic, partition in stale:
                await session.execute(
                    delete(consumer_positions).where(
                        consumer_positions.c.topic == topic,
                        consumer_positions.c.partition == partition,
                    )
                )
        log.warning(
            "stored positions beyond the end of the log were dropped (topics recreated?)",
            extra={"partitions": len(stale)},
        )
    return len(stale)
