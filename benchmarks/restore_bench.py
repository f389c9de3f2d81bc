"""Restore: `zapflow log restore` of an archive of about a million events into an empty log.

The events are the decider scenario's (50 tenants), sealed, encoded as the decider writes them,
spread over the partitions by tenant and archived with consecutive offsets, as the projector
would have archived them. Deciding a million events takes minutes, and a restore copies bytes
without decoding them, so `UNIQUE_EVENTS` are decided and the archive repeats each partition's
records, with the following offsets, up to the size asked for (the baseline sends the same
repeated records). Ours is `streams.restore.restore` end to end: the archive read back
in offset order from PostgreSQL, each batch sent to its partition and checked to land where the
archive says. The baseline, in the same run, sends the same records from memory, in batches of
the same size, to the same number of partitions of another empty topic: the broker's part alone.
"""

from __future__ import annotations

import time
import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Final

from aiokafka.producer.message_accumulator import BatchBuilder

from benchmarks.decider_bench import TENANTS, Rate
from benchmarks.infra import PARTITIONS, Infra, create_topic
from benchmarks.projector_bench import decided_chunks
from events.envelope import EventEnvelope, encode_event
from projections import archive
from projections.database import connect
from streams import kafka
from streams.restore import restore

CHUNK: Final = 10_000
UNIQUE_EVENTS: Final = 100_000
_REPEAT: Final = """
INSERT INTO event_archive (topic, partition, "offset", key, value, headers, timestamp_ms,
                           tenant_id, tenant_seq, hash)
SELECT topic, partition, "offset" + $3::bigint * k, key, value, headers, timestamp_ms,
       tenant_id, tenant_seq, hash
FROM event_archive, generate_series(1, $4::int - 1) AS k
WHERE topic = $1 AND partition = $2 AND "offset" < $3::bigint
"""
_BATCH_BYTES: Final = 1_000_000

type Record = tuple[bytes, bytes, list[tuple[str, bytes]], int]


@dataclass(frozen=True, slots=True)
class RestoreRun:
    ours: Rate
    baseline: Rate
    events: int
    archive_s: float


async def _archive(infra: Infra, topic: str, events: int) -> dict[int, list[Record]]:
    """Archive about `events` records under `topic`; returns them per partition, in offset
    order."""
    commands = min(events, UNIQUE_EVENTS) - TENANTS
    repeats = max(1, round(events / (commands + TENANTS)))
    partitions: dict[int, list[Record]] = defaultdict(list)
    conn = await connect(infra.database_url)
    try:
        for chunk in decided_chunks(commands, CHUNK):
            batches: dict[int, list[tuple[EventEnvelope, Record]]] = defaultdict(list)
            for envelope in chunk:
                key, value, headers = encode_event(envelope)
                partition = zlib.crc32(key) % PARTITIONS  # a tenant's events stay together
                batches[partition].append((envelope, (key, value, list(headers), 0)))
            for partition, rows in batches.items():
                first = len(partitions[partition])
                records = [(first + i, key, value, headers, ms)
                           for i, (_, (key, value, headers, ms)) in enumerate(rows)]  # fmt: skip
                await archive.store(conn, topic, partition, records, [e for e, _ in rows])
                partitions[partition].extend(record for _, record in rows)
        for partition, kept in partitions.items():  # one plain scan per partition
            if repeats > 1:
                await conn.execute(_REPEAT, topic, partition, len(kept), repeats)
    finally:
        await conn.close()
    return {p: records * repeats for p, records in partitions.items()}


async def _raw_produce(infra: Infra, partitions: dict[int, list[Record]]) -> float:
    topic = await create_topic(infra, "restore-baseline")
    producer = kafka.producer(infra.bootstrap_servers, max_batch_size=_BATCH_BYTES, linger_ms=0)
    await producer.start()
    try:
        started = time.perf_counter()
        for partition in sorted(partitions):
            batch: BatchBuilder = producer.create_batch()
            for key, value, headers, ms in partitions[partition]:
                if batch.append(key=key, value=value, timestamp=ms, headers=headers) is None:
                    await (await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    batch.append(key=key, value=value, timestamp=ms, headers=headers)
            await (await producer.send_batch(batch, topic, partition=partition))
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def restore_run(infra: Infra, events: int) -> RestoreRun:
    """Archive about `events` events, restore them into an empty topic, and time both ways."""
    topic = await create_topic(infra, "restore-events")
    started = time.perf_counter()
    partitions = await _archive(infra, topic, events)
    archived = time.perf_counter() - started
    total = sum(len(records) for records in partitions.values())
    started = time.perf_counter()
    report = await restore(infra.bootstrap_servers, infra.database_url, topic)
    ours = time.perf_counter() - started
    assert report.total == total, (report.total, total)
    baseline = await _raw_produce(infra, partitions)
    return RestoreRun(Rate(total, ours), Rate(total, baseline), total, archived)
