"""Decider throughput: `streams.decider` vs a raw aiokafka consume → produce → commit loop."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import OffsetAndMetadata

from benchmarks.infra import Infra, create_topic
from commands.inbound import ReceiveInboundMessage
from commands.tenant import RegisterTenant
from events.envelope import CommandEnvelope, encode_command
from events.registry import Message
from streams import kafka
from streams.decider import Topics, run_decider

TENANTS: Final = 50
CONVERSATIONS_PER_TENANT: Final = 20
ACCOUNT: Final = "AC" + "1" * 32
SENDER: Final = "whatsapp:+14155238886"
LIMIT_S: Final = 120.0
MAX_RECORDS: Final = 5000


@dataclass(frozen=True, slots=True)
class Rate:
    commands: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.commands / self.seconds


def _envelope(tenant: uuid.UUID, body: Message, n: int) -> CommandEnvelope:
    command_id = uuid.uuid5(tenant, f"bench-{n}")
    return CommandEnvelope(
        command_id=command_id,
        tenant_id=tenant,
        type=body.type,
        schema_version=body.schema_version,
        issued_at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        correlation_id=command_id,
        payload=body.payload(),
    )


def bench_commands(count: int, fresh_tenants: bool = False) -> list[CommandEnvelope]:
    """One registration per tenant, then `count` inbound messages spread over the tenants."""
    return list(command_stream(count, fresh_tenants))


def command_stream(count: int, fresh_tenants: bool = False) -> Iterator[CommandEnvelope]:
    """`bench_commands`, one at a time (for runs too large to hold in memory)."""
    if fresh_tenants:
        tenants = [uuid.uuid4() for _ in range(TENANTS)]
    else:
        tenants = [uuid.UUID(int=(0xDEC1 << 112) + n) for n in range(TENANTS)]
    yield from (
        _envelope(
            tenant,
            RegisterTenant(
                name=f"bench {n}",
                twilio_account_sid=ACCOUNT,
                twilio_auth_token_encrypted="c2VhbGVk",
                senders=[SENDER],
                api_key_sha256=hashlib.sha256(tenant.bytes).hexdigest(),
            ),
            -1,
        )
        for n, tenant in enumerate(tenants)
    )
    for n in range(count):
        tenant = tenants[n % TENANTS]
        contact = f"whatsapp:+551190000{(n // TENANTS) % CONVERSATIONS_PER_TENANT:04d}"
        inbound = ReceiveInboundMessage(
            message_sid=f"SM{n:032x}", account_sid=ACCOUNT, contact=contact, sender=SENDER,
            body=f"Olá, quero marcar uma consulta ({n})",
        )  # fmt: skip
        yield _envelope(tenant, inbound, n)


async def produce_commands(infra: Infra, count: int) -> tuple[str, int]:
    """A fresh topic holding `count` inbound commands (after one registration per tenant)."""
    topic = await create_topic(infra, "decider-commands")
    producer = kafka.producer(infra.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        commands = bench_commands(count)
        for start in range(0, len(commands), 1000):
            futures = []
            for envelope in commands[start : start + 1000]:
                key, value, headers = encode_command(envelope)
                futures.append(await producer.send(topic, value, key=key, headers=headers))
            await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return topic, len(commands)


class _Meter:
    """Times from the first committed batch to the last: group-join time is not throughput."""

    def __init__(self, expected: int) -> None:
        self.expected, self.seen, self.first = expected, 0, 0
        self.started = self.finished = 0.0
        self.done = asyncio.Event()

    def __call__(self, count: int) -> None:
        if not self.seen:
            self.started, self.first = time.perf_counter(), count
        self.seen += count
        if self.seen >= self.expected:
            self.finished = time.perf_counter()
            self.done.set()

    def rate(self) -> Rate:
        return Rate(self.seen - self.first, self.finished - self.started)


async def _measure(
    run: Callable[[asyncio.Event, _Meter], Coroutine[Any, Any, None]], expected: int
) -> Rate:
    stop, meter = asyncio.Event(), _Meter(expected)
    task = asyncio.create_task(run(stop, meter))
    try:
        await asyncio.wait_for(meter.done.wait(), LIMIT_S)
    finally:
        stop.set()
        await task
    return meter.rate()


async def decider_rate(infra: Infra, topic: str, expected: int) -> Rate:
    topics = Topics(
        commands=topic,
        events=await create_topic(infra, "decider-events"),
        dlq=await create_topic(infra, "decider-dlq"),
        group=f"bench-decider-{uuid.uuid4().hex[:8]}",
    )

    async def run(stop: asyncio.Event, meter: _Meter) -> None:
        await run_decider(
            infra.bootstrap_servers, stop, topics=topics, on_commit=meter, max_records=MAX_RECORDS
        )

    return await _measure(run, expected)


async def raw_loop_rate(infra: Infra, topic: str, expected: int) -> Rate:
    """The same records through getmany → send futures (acks=all) → gather → commit."""
    out = await create_topic(infra, "raw-loop-out")

    async def run(stop: asyncio.Event, meter: _Meter) -> None:
        producer = kafka.producer(infra.bootstrap_servers, linger_ms=0)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=infra.bootstrap_servers,
            group_id=f"bench-raw-{uuid.uuid4().hex[:8]}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_RECORDS,
        )
        await producer.start()
        await consumer.start()
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
                for tp, records in batches.items():
                    futures = [
                        await producer.send(out, r.value, key=r.key, partition=tp.partition)
                        for r in records
                    ]
                    await asyncio.gather(*futures)
                    await consumer.commit({tp: OffsetAndMetadata(records[-1].offset + 1, "")})
                    meter(len(records))
        finally:
            await consumer.stop()
            await producer.stop()

    return await _measure(run, expected)
