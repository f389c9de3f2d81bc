"""Audit replay throughput: `zapflow replay`'s core vs a raw aiokafka consume of the same records.

Ours is what `zapflow replay --tenant T --out FILE` does: a group-less `LogSource` on the
tenant's partition, every record of the tenant checked against its hash chain (hash recomputed,
sequence and link), written as NDJSON to a file, and the manifest. The baseline is a bare
aiokafka consumer (assign, seek to 0, `getmany(max_records=2000)` until the partition's end) of
the same partition in the same run. Both are timed from creating the consumer to the end.

Wiring into `make bench` (benchmarks/__main__.py, owned by the benchmark work): build the events
once (a 50,000-event tenant takes ~15 s to decide and seal), then per repeat

    ours, raw = Samples("events/s"), Samples("events/s")
    events = replay_bench.tenant_events(plan.events)
    for run in range(plan.repeats):
        o, r = await replay_bench.replay_rates(infra, events)
        ours.add(o.per_s)
        raw.add(r.per_s)
    Row("Audit replay: `zapflow replay --out` core (group-less read of the tenant's partition, "
        "hash chain verified, NDJSON + manifest written)", ours.median, raw.median, "events/s",
        "higher", f"baseline: raw aiokafka consume (assign, seek 0, getmany 2000) of the same "
        f"partition in the same run; {replay_bench.describe(events)}; target ≥ 0.5x; "
        f"{_runs(ours, raw)}")

Each call publishes to a fresh topic, so runs do not share a warm partition.
"""

from __future__ import annotations

import gc
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks.decider_bench import ACCOUNT, SENDER, Rate
from benchmarks.infra import PARTITIONS, Infra, create_topic
from commands.inbound import ReceiveInboundMessage
from commands.tenant import RegisterTenant
from events.chain import seal
from events.envelope import CommandEnvelope, EventEnvelope
from events.registry import Message
from streams import kafka
from streams.audit_export import ExportFile, manifest
from streams.log import append
from streams.replay import FETCH_RECORDS, LogSource, Replay, Selection, tenant_partition
from streams.tenant_book import TenantBook

CONVERSATIONS: Final = 40
LIMIT_S: Final = 300.0


def tenant_events(count: int) -> list[EventEnvelope]:
    """About `count` sealed events of ONE tenant (a registration, then inbound messages over
    40 conversations), decided by the real `TenantBook`: its partition holds only them, so every
    record either side reads is one the replay verifies and writes."""
    tenant = uuid.uuid4()
    book, out = TenantBook(tenant), []
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def decide(body: Message, n: int) -> None:
        command_id = uuid.uuid5(tenant, f"replay-bench-{n}")
        issued = start + timedelta(milliseconds=n)
        command = CommandEnvelope(
            command_id=command_id, tenant_id=tenant, type=body.type,
            schema_version=body.schema_version, issued_at=issued, correlation_id=command_id,
            payload=body.payload(),
        )  # fmt: skip
        for draft, event in book.decide(command, issued):
            envelope = seal(draft, book.head)
            book.record(envelope, event)
            out.append(envelope)

    decide(RegisterTenant(name="replay bench", twilio_account_sid=ACCOUNT,
                          twilio_auth_token_encrypted="c2VhbGVk", senders=[SENDER],
                          api_key_sha256="0" * 64), 0)  # fmt: skip
    n = 0
    while len(out) < count:
        n += 1
        contact = f"whatsapp:+551190000{n % CONVERSATIONS:04d}"
        decide(ReceiveInboundMessage(message_sid=f"SM{n:032x}", account_sid=ACCOUNT,
                                     contact=contact, sender=SENDER,
                                     body=f"Olá, quero marcar uma consulta ({n})"), n)  # fmt: skip
    return out


def describe(events: list[EventEnvelope]) -> str:
    tenants = Counter(e.tenant_id for e in events)
    return (
        f"{len(events):,} events of {len(tenants)} tenant(s), the replayed tenant's partition "
        f"holding {tenants.most_common(1)[0][1]:,} of them"
    )


async def _publish(infra: Infra, events: list[EventEnvelope]) -> str:
    topic = await create_topic(infra, "replay")
    producer = kafka.producer(infra.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        for start in range(0, len(events), 1000):
            await append(producer, events[start : start + 1000], topic)
    finally:
        await producer.stop()
    return topic


async def _raw(servers: str, topic: str, partition: int, end: int) -> Rate:
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        records = 0
        while records < end and time.perf_counter() - started < LIMIT_S:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=FETCH_RECORDS)
            records += sum(len(chunk) for chunk in batch.values())
    finally:
        await consumer.stop()
    if records < end:
        raise RuntimeError(f"raw consume read {records} of {end} records of {topic}")
    return Rate(records, time.perf_counter() - started)


async def _ours(infra: Infra, topic: str, tenant: uuid.UUID) -> tuple[Rate, Replay]:
    out = infra.work_dir / f"replay-{tenant}.ndjson"
    started = time.perf_counter()
    with out.open("wb") as file:
        lines = ExportFile(file)
        async with LogSource(infra.bootstrap_servers, topic, tenant) as source:
            replay = Replay(Selection(tenant), source)
            async for emitted in replay.emitted():
                await lines.write(emitted)
        await lines.flush()
        manifest(replay, lines.sha256, datetime.now(UTC))
    elapsed = time.perf_counter() - started
    out.unlink()
    return Rate(replay.count, elapsed), replay


async def replay_rates(infra: Infra, events: list[EventEnvelope]) -> tuple[Rate, Rate]:
    """(ours, raw) in events/s: the tenant with the most events replayed with verification,
    and a raw consume of its partition; each after a warm-up run of both."""
    topic = await _publish(infra, events)
    tenant, count = Counter(e.tenant_id for e in events).most_common(1)[0]
    partition = tenant_partition(tenant, range(PARTITIONS))
    end = sum(1 for e in events if tenant_partition(e.tenant_id, range(PARTITIONS)) == partition)
    # `zapflow replay` runs in a process of its own; here the bench's events share one with it,
    # which the garbage collector would otherwise scan over and over. Frozen, they are not.
    gc.collect()
    gc.freeze()
    try:
        # Warm-up of both: the broker's caches, and the first run's one-off costs (the writer
        # thread, imports) that a replay of a long history does not pay per event.
        await _raw(infra.bootstrap_servers, topic, partition, end)
        await _ours(infra, topic, tenant)
        raw = await _raw(infra.bootstrap_servers, topic, partition, end)
        ours, replay = await _ours(infra, topic, tenant)
    finally:
        gc.unfreeze()
    if not replay.ok or replay.count != count:
        issues = [str(issue) for issue in replay.chain.issues[:3]]
        raise RuntimeError(f"replay of {topic}: {replay.count}/{count} events, issues {issues}")
    return ours, raw
