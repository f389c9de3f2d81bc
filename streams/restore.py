"""Restoring `zapflow.events` from the event archive, so offsets, sequences and hashes match.

The development broker keeps its log in memory; the archive in PostgreSQL does not. Restoring
writes each partition's archived records back in offset order, in record batches to that very
partition, into a log that must be empty: the offsets come out identical, so every projection's
checkpoint stays valid and every chain verifies as before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer.message_accumulator import BatchBuilder

from projections import archive
from projections.database import Conn, connect
from streams import kafka
from streams.topics import EVENTS

log = logging.getLogger("zapflow.restore")
_BATCH_BYTES = 1_000_000


class RestoreRefused(Exception):
    """The log is not empty, or the archive has a hole: restoring would shift offsets."""


@dataclass(slots=True)
class RestoreReport:
    restored: dict[int, int] = field(default_factory=dict)
    """partition → records written."""

    @property
    def total(self) -> int:
        return sum(self.restored.values())


async def log_is_empty(bootstrap_servers: str, topic: str = EVENTS) -> bool:
    consumer = kafka.groupless_consumer(bootstrap_servers)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        # end_offsets is wrong about *where* a non-empty partition ends on the development
        # broker, but right about whether it is empty (ADR 0006).
        ends = await consumer.end_offsets(tps) if tps else {}
        return all(end == 0 for end in ends.values())
    finally:
        await consumer.stop()


async def restore(
    bootstrap_servers: str, database_url: str, topic: str = EVENTS, *, only_if_empty: bool = False
) -> RestoreReport:
    """Write the archive back into an empty log; refuses a non-empty one.

    With `only_if_empty`, a non-empty log is not an error: nothing is done (what `zapflow up`
    wants when the broker kept its log).
    """
    report = RestoreReport()
    conn = await connect(database_url)
    try:
        counts = await archive.counts(conn, topic)
        if not counts:
            return report
        if not await log_is_empty(bootstrap_servers, topic):
            if only_if_empty:
                return report
            raise RestoreRefused(f"{topic} is not empty; restoring would duplicate offsets")
        producer = kafka.producer(bootstrap_servers, max_batch_size=_BATCH_BYTES, linger_ms=0)
        await producer.start()
        try:
            for partition in sorted(counts):
                report.restored[partition] = await _restore_partition(
                    conn, producer, topic, partition
                )
        finally:
            await producer.stop()
    finally:
        await conn.close()
    log.info("restored %d events into %s from the archive", report.total, topic)
    return report


async def _restore_partition(
    conn: Conn, producer: AIOKafkaProducer, topic: str, partition: int
) -> int:
    expected, written = 0, 0
    async for rows in archive.read_partition(conn, topic, partition):
        batch, first = producer.create_batch(), written
        for row in rows:
            if row.offset != expected:
                raise RestoreRefused(
                    f"{topic} partition {partition}: the archive jumps from offset {expected - 1} "
                    f"to {row.offset}; restoring would shift every later offset"
                )
            expected += 1
            if batch.append(key=row.key, value=row.value, timestamp=row.timestamp_ms,
                            headers=row.headers) is None:  # fmt: skip
                written = await _send(producer, batch, topic, partition, first)
                batch, first = producer.create_batch(), written
                batch.append(key=row.key, value=row.value, timestamp=row.timestamp_ms,
                             headers=row.headers)  # fmt: skip
        written = await _send(producer, batch, topic, partition, first)
    return expected


async def _send(
    producer: AIOKafkaProducer, batch: BatchBuilder, topic: str, partition: int, first: int
) -> int:
    """Send one batch; it must land exactly at `first` (a retried, duplicated batch would not)."""
    count: int = batch.record_count()
    metadata = await (await producer.send_batch(batch, topic, partition=partition))
    landed: int = metadata.offset
    if landed != first:
        raise RestoreRefused(
            f"{topic} partition {partition}: a batch meant for offset {first} landed at "
            f"{landed}; the restored log is not a faithful copy, stop and investigate"
        )
    return first + count
