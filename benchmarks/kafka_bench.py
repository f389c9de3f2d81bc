"""Log scenarios: raw aiokafka produce/consume vs zapflow's seal + append and replay + verify."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.infra import PARTITIONS
from events.chain import GENESIS, ChainHead, ChainVerifier, head_of, seal
from events.envelope import EventDraft, EventEnvelope, encode_event
from streams import kafka
from streams.log import append, read_all

TENANTS: Final = 50
BATCH: Final = 1000
VALUE_BYTES: Final = 250
FETCH_RECORDS: Final = 2000
WARMUP: Final = 2000
LIMIT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Throughput:
    records: int
    seconds: float
    value_bytes: float

    @property
    def per_s(self) -> float:
        return self.records / self.seconds


def tenant_ids() -> list[uuid.UUID]:
    return [uuid.UUID(int=(0x5A9F << 112) + n) for n in range(1, TENANTS + 1)]


def _raw_values(count: int) -> list[bytes]:
    """Distinct JSON values of exactly VALUE_BYTES bytes each."""
    values = []
    for n in range(count):
        head = orjson.dumps({"n": n, "type": "MessageReceived", "pad": ""})
        values.append(head[:-2] + b"x" * (VALUE_BYTES - len(head)) + b'"}')
    return values


def _raw_producer(bootstrap_servers: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=False, linger_ms=5
    )


async def raw_produce(
    bootstrap_servers: str, topic: str, warmup_topic: str, count: int
) -> Throughput:
    """Plain aiokafka: `send` futures for BATCH records at a time, gathered (acks=all)."""
    keys = [str(tenant).encode() for tenant in tenant_ids()]
    values = _raw_values(1000)
    producer = _raw_producer(bootstrap_servers)
    await producer.start()
    try:

        async def run(target: str, total: int) -> None:
            for start in range(0, total, BATCH):
                futures = [
                    await producer.send(target, values[n % 1000], key=keys[n % TENANTS])
                    for n in range(start, min(total, start + BATCH))
                ]
                await asyncio.gather(*futures)

        await run(warmup_topic, WARMUP)
        started = time.perf_counter()
        await asyncio.wait_for(run(topic, count), LIMIT_S)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    return Throughput(count, elapsed, float(len(values[0])))


def _draft(tenant: uuid.UUID, n: int) -> EventDraft:
    now = datetime.now(UTC)
    command = uuid.uuid4()
    return EventDraft(
        event_id=uuid.uuid4(),
        type="MessageReceived",
        schema_version=1,
        tenant_id=tenant,
        stream=f"conversation:{tenant.int % 997}-{n % 40}",
        occurred_at=now,
        recorded_at=now,
        correlation_id=command,
        causation_id=command,
        payload={"message_sid": f"SM{n:032x}", "chars": 68, "media": 0},
    )


async def _sealed_appends(
    producer: AIOKafkaProducer, topic: str, count: int, heads: dict[uuid.UUID, ChainHead]
) -> list[EventEnvelope]:
    """Build, seal and append `count` events in batches; returns the last batch."""
    tenants, batch = list(heads), list[EventEnvelope]()
    for start in range(0, count, BATCH):
        batch = []
        for n in range(start, min(count, start + BATCH)):
            tenant = tenants[n % len(tenants)]
            envelope = seal(_draft(tenant, n), heads[tenant])
            heads[tenant] = head_of(envelope)
            batch.append(envelope)
        await append(producer, batch, topic)
    return batch


async def zapflow_append(
    bootstrap_servers: str, topic: str, warmup_topic: str, count: int
) -> Throughput:
    """EventDraft → `events.chain.seal` (50 tenant chains) → `streams.log.append` per BATCH."""
    producer = kafka.producer(bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        sample = await _sealed_appends(
            producer, warmup_topic, WARMUP, dict.fromkeys(tenant_ids(), GENESIS)
        )
        heads = dict.fromkeys(tenant_ids(), GENESIS)
        started = time.perf_counter()
        await asyncio.wait_for(_sealed_appends(producer, topic, count, heads), LIMIT_S)
        elapsed = time.perf_counter() - started
    finally:
        await producer.stop()
    size = sum(len(encode_event(e)[1]) for e in sample) / max(len(sample), 1)
    return Throughput(count, elapsed, size)


async def raw_consume(bootstrap_servers: str, topic: str, expected: int) -> Throughput:
    """Group-less aiokafka: assign all partitions, seek to the beginning, `getmany(2000)`."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        started = time.perf_counter()
        deadline = started + LIMIT_S
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records = total_bytes = 0
        while records < expected and time.perf_counter() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=FETCH_RECORDS)
            for chunk in batch.values():
                records += len(chunk)
                total_bytes += sum(len(record.value) for record in chunk)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    if records != expected:
        raise RuntimeError(f"raw consume read {records} of {expected} records from {topic}")
    return Throughput(records, elapsed, total_bytes / max(records, 1))


async def zapflow_replay(bootstrap_servers: str, topic: str, expected: int) -> Throughput:
    """`streams.log.read_all` (decode_event) + one `ChainVerifier` per tenant, fed in log order."""
    consumer = kafka.groupless_consumer(bootstrap_servers, max_poll_records=FETCH_RECORDS)
    await consumer.start()
    verifiers: defaultdict[uuid.UUID, ChainVerifier] = defaultdict(ChainVerifier)

    async def replay() -> None:
        async for _position, envelope in read_all(consumer, topic):
            verifiers[envelope.tenant_id].feed(envelope)

    try:
        started = time.perf_counter()
        await asyncio.wait_for(replay(), LIMIT_S)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    accepted = sum(v.accepted for v in verifiers.values())
    issues = sum(len(v.issues) for v in verifiers.values())
    if accepted != expected or issues:
        raise RuntimeError(f"replay of {topic}: {accepted}/{expected} accepted, {issues} issues")
    return Throughput(accepted, elapsed, 0.0)
