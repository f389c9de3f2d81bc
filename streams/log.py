"""Appending sealed events to `zapflow.events` and reading them back without a consumer group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from events.envelope import (
    CommandEnvelope,
    EventEnvelope,
    decode_event,
    encode_command,
    encode_event,
)
from events.registry import Message
from projections import status
from streams.topics import COMMANDS, EVENTS


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


async def start_from_zero(consumer: AIOKafkaConsumer, topic: str) -> dict[TopicPartition, int]:
    """Assign every partition from offset 0; returns where each ended at start."""
    partitions = await status.topic_partitions(consumer, topic)
    if not partitions:
        raise RuntimeError(f"topic {topic} does not exist; run `zapflow setup`")
    ends = await status.log_ends(consumer, topic, partitions, {})
    assigned = [TopicPartition(topic, p) for p in partitions]
    for tp in assigned:
        consumer.seek(tp, 0)  # not seek_to_beginning: ListOffsets is unreliable on Tansu
    return {tp: ends[tp.partition] for tp in assigned if ends[tp.partition] > 0}


def decoded(value: bytes | None) -> EventEnvelope | None:
    if value is None:
        return None
    try:
        return decode_event(value)
    except (ValueError, TypeError):
        return None  # not an event: the projector reports it; nothing to act on here


class Follower(Protocol):
    """What `follow` drives: folds every event, is told once it has caught up, then ticks."""

    name: str

    def fold(self, envelope: EventEnvelope) -> None: ...
    def caught_up_with_log(self) -> None: ...
    async def tick(self) -> None: ...


async def follow(
    consumer: AIOKafkaConsumer, topic: str, stop: asyncio.Event, follower: Follower,
    tick_s: float = 0.02,
) -> None:  # fmt: skip
    """Fold the whole log from offset 0 into `follower` and keep folding until `stop`; once
    every partition reached the end it had at start, `caught_up_with_log`, and from then on
    `tick` after each fetch. The group-less, commit-nothing reader of the agent runner and the
    sender (ADR 0014): after any crash the log alone says what is left to do."""
    log = logging.getLogger(f"zapflow.{follower.name}")
    pending_ends = await start_from_zero(consumer, topic)
    caught_up = False
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=int(tick_s * 1000), max_records=2000)
        for records in batch.values():
            for record in records:
                envelope = decoded(record.value)
                if envelope is None:
                    continue
                try:
                    follower.fold(envelope)
                except Exception:
                    log.exception(
                        "%s skipped an event it cannot fold", follower.name,
                        extra={"tenant_id": str(envelope.tenant_id),
                               "event_id": str(envelope.event_id)},
                    )  # fmt: skip
        if not caught_up:
            for tp in list(pending_ends):
                if await consumer.position(tp) >= pending_ends[tp]:
                    del pending_ends[tp]
            if not pending_ends:
                caught_up = True
                follower.caught_up_with_log()
        if caught_up:
            await follower.tick()


async def stop_within(
    work: Coroutine[object, object, None], stop: asyncio.Event, grace_s: float, name: str
) -> None:
    """Run `work` until it ends; once `stop` is set it gets `grace_s` to finish, then it is
    cancelled. A stop during start-up (the supervisor gone, the broker with it) must not wait
    for the broker's timeouts; nothing is lost by cancelling, the log says what is left."""
    task = asyncio.create_task(work)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace_s)
        if not task.done():
            logging.getLogger(f"zapflow.{name}").warning(
                "%s did not stop within %.0f s; cancelling it", name, grace_s
            )
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        stopped.cancel()


async def submit(
    producer: AIOKafkaProducer, tenant_id: UUID, command_id: UUID, command: Message,
    issued_at: datetime, retry_s: float = 1.0,
) -> None:  # fmt: skip
    """Put a worker's command on `zapflow.commands`, waiting out a broker outage: the work it
    records (a model's answer, a message Twilio took) is never dropped. `command_id` is derived
    from what the command is about, so a retry after a crash is the same command."""
    envelope = CommandEnvelope(
        command_id=command_id, tenant_id=tenant_id, type=command.type,
        schema_version=command.schema_version, issued_at=issued_at, correlation_id=command_id,
        payload=command.payload(),
    )  # fmt: skip
    await submit_envelope(producer, envelope, retry_s)


async def submit_envelope(
    producer: AIOKafkaProducer, envelope: CommandEnvelope, retry_s: float = 1.0
) -> None:
    """`submit` for an envelope built by the caller (its own correlation id), keyed by tenant."""
    key, value, headers = encode_command(envelope)
    while True:
        try:
            await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)
        except KafkaError as exc:
            logging.getLogger("zapflow.commands").warning(
                "could not submit %s (%s); retrying", envelope.type, type(exc).__name__,
                extra={"tenant_id": str(envelope.tenant_id),
                       "command_id": str(envelope.command_id)},
            )  # fmt: skip
            await asyncio.sleep(retry_s)
        else:
            return
