"""Appending sealed events to `zapflow.events` and reading them back without a consumer group."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from events.envelope import EventEnvelope, decode_event, encode_event
from streams.topics import EVENTS


@dataclass(frozen=True, slots=True)
class Position:
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"partition {self.partition} offset {self.offset}"


async def append(
    producer: AIOKafkaProducer, envelopes: Sequence[EventEnvelope], topic: str = EVENTS
) -> list[Position]:
    """Produce every envelope (keyed by tenant) and await acks=all for all of them."""
    futures = []
    for envelope in envelopes:
        key, value, headers = encode_event(envelope)
        futures.append(await producer.send(topic, value, key=key, headers=headers))
    metadata = await asyncio.gather(*futures)
    return [Position(m.partition, m.offset) for m in metadata]


async def read_all(
    consumer: AIOKafkaConsumer, topic: str = EVENTS, idle_timeout_ms: int = 1000
) -> AsyncIterator[tuple[Position, EventEnvelope]]:
    """Every event from offset 0 up to each partition's end as first seen, in partition order.

    `consumer` must be started and group-less; it is assigned here and never commits. The end
    is the high watermark of the first fetch response, not `end_offsets()`: the development
    broker answers ListOffsets with the last batch's base offset + 1 (see ADR 0006).
    """
    partitions = consumer.partitions_for_topic(topic)
    if partitions is None:
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        partitions = consumer.partitions_for_topic(topic) or set()
    async for item in read_partitions(consumer, topic, sorted(partitions), idle_timeout_ms):
        yield item


async def read_partition(
    consumer: AIOKafkaConsumer, topic: str, partition: int, idle_timeout_ms: int = 5000
) -> AsyncIterator[tuple[Position, EventEnvelope]]:
    """One partition's events from offset 0 to its end as first seen (see `read_all`)."""
    async for item in read_partitions(consumer, topic, [partition], idle_timeout_ms):
        yield item


async def read_partitions(
    consumer: AIOKafkaConsumer, topic: str, partitions: list[int], idle_timeout_ms: int
) -> AsyncIterator[tuple[Position, EventEnvelope]]:
    assigned = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(assigned)
    await consumer.seek_to_beginning(*assigned)
    # Wrong on the dev broker for the exact end, but zero exactly when a partition is empty.
    listed = await consumer.end_offsets(assigned)
    remaining = {tp for tp in assigned if listed[tp] > 0}
    ends: dict[TopicPartition, int] = {}
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=idle_timeout_ms)
        if not batch:
            raise TimeoutError(f"no records within {idle_timeout_ms} ms; {len(remaining)} left")
        for tp, records in batch.items():
            end = ends.setdefault(tp, consumer.highwater(tp))
            for record in records:
                if record.offset < end:
                    yield Position(tp.partition, record.offset), decode_event(record.value)
            if records and records[-1].offset >= end - 1:
                remaining.discard(tp)
