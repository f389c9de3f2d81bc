"""Projector throughput: `projections.runner` vs raw asyncpg `executemany` of the same events.

The events are what the real decider produces for the decider scenario's commands (tenant
registrations, conversations started, inbound messages), decided and sealed in process and
appended to a fresh topic. Ours is timed from the projector's start until every projection's
checkpoint reaches the end of every partition (archive, tenant directory, conversations, each in
PostgreSQL with its checkpoint). The baseline writes one row per event (id, tenant, sequence,
JSON payload) with `executemany`, 1,000 rows per transaction, into a scratch table.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Final

import asyncpg
import orjson

from benchmarks.decider_bench import TENANTS, Rate, bench_commands
from benchmarks.infra import Infra, create_topic
from events.chain import seal
from events.envelope import EventEnvelope
from projections.batch import checkpoint_names
from projections.runner import PROJECTIONS, run_projector
from streams import kafka
from streams.log import append
from streams.tenant_book import TenantBook

LIMIT_S: Final = 300.0
ROWS_PER_TRANSACTION: Final = 1000
_SCRATCH: Final = "bench_projector_baseline"


def decided_events(count: int) -> list[EventEnvelope]:
    """The sealed events of `count` inbound commands (plus registrations), fresh tenants."""
    books: dict[object, TenantBook] = {}
    out: list[EventEnvelope] = []
    now = datetime.now(UTC)
    for command in bench_commands(count, fresh_tenants=True):
        book = books.setdefault(command.tenant_id, TenantBook(command.tenant_id))
        for draft, event in book.decide(command, now):
            envelope = seal(draft, book.head)
            book.record(envelope, event)
            out.append(envelope)
    return out


async def _publish(infra: Infra, events: list[EventEnvelope]) -> tuple[str, Counter[int]]:
    topic = await create_topic(infra, "projector-events")
    producer = kafka.producer(infra.bootstrap_servers, linger_ms=5)
    await producer.start()
    try:
        ends: Counter[int] = Counter()
        for start in range(0, len(events), 1000):
            for position in await append(producer, events[start : start + 1000], topic):
                ends[position.partition] = max(ends[position.partition], position.offset + 1)
    finally:
        await producer.stop()
    return topic, ends


async def _caught_up(conn: asyncpg.Connection, topic: str, ends: Counter[int]) -> bool:
    rows = await conn.fetch(
        "SELECT projection, partition, next_offset FROM projection_checkpoints WHERE topic = $1",
        topic,
    )
    have = {(r["projection"], r["partition"]): r["next_offset"] for r in rows}
    names = checkpoint_names(PROJECTIONS)
    return all(have.get((n, p), 0) >= end for n in names for p, end in ends.items())


async def projector_rate(infra: Infra, events: list[EventEnvelope]) -> Rate:
    topic, ends = await _publish(infra, events)
    stop = asyncio.Event()
    conn = await asyncpg.connect(infra.database_url)
    started = time.perf_counter()
    task = asyncio.create_task(
        run_projector(infra.bootstrap_servers, infra.database_url, stop, topic=topic)
    )
    try:
        while not await _caught_up(conn, topic, ends):
            if task.done():
                task.result()
                raise RuntimeError("the projector stopped before catching up")
            if time.perf_counter() - started > LIMIT_S:
                raise TimeoutError("the projector did not catch up in time")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        stop.set()
        await task
        await conn.close()
    return Rate(len(events), elapsed)


async def raw_rate(database_url: str, events: list[EventEnvelope]) -> Rate:
    rows = [
        (e.event_id, e.tenant_id, e.tenant_seq, orjson.dumps(e.payload).decode()) for e in events
    ]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"CREATE TABLE {_SCRATCH} (event_id uuid PRIMARY KEY, tenant_id uuid NOT NULL,"
            " tenant_seq bigint NOT NULL, payload jsonb NOT NULL)"
        )
        sql = (
            f"INSERT INTO {_SCRATCH} VALUES ($1, $2, $3, $4::jsonb) "  # noqa: S608 - constant
            "ON CONFLICT (event_id) DO NOTHING"
        )
        started = time.perf_counter()
        for start in range(0, len(rows), ROWS_PER_TRANSACTION):
            async with conn.transaction():
                await conn.executemany(sql, rows[start : start + ROWS_PER_TRANSACTION])
        elapsed = time.perf_counter() - started
        await conn.execute(f"DROP TABLE {_SCRATCH}")
    finally:
        await conn.close()
    return Rate(len(rows), elapsed)


def describe(events: list[EventEnvelope]) -> str:
    kinds = Counter(e.type for e in events)
    return ", ".join(f"{n:,} {kind}" for kind, n in kinds.most_common()) + f"; {TENANTS} tenants"
