"""Projector throughput: `projections.runner` vs raw asyncpg `executemany` of the same events.

The events are what the real decider produces for the decider scenario's commands (tenant
registrations, conversations started, inbound messages), decided and sealed in process and
appended to a fresh topic. Ours is timed from the projector's start until every projection's
checkpoint reaches the end of every partition (archive, tenant directory, conversations, each in
PostgreSQL with its checkpoint). Two baselines, both raw `executemany`, 1,000 events per
transaction: the same rows the projector writes, into copies of its tables (`same_rows_rate`),
and one narrow row per event into a scratch table (`raw_rate`).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final
from uuid import UUID

import asyncpg
import orjson

from benchmarks.decider_bench import TENANTS, Rate, command_stream
from benchmarks.infra import Infra, create_topic
from events.chain import seal
from events.envelope import EventEnvelope, encode_event, headers_to_json
from projections.batch import checkpoint_names
from projections.runner import PROJECTIONS, run_projector
from streams import kafka
from streams.log import append
from streams.tenant_book import TenantBook

LIMIT_S: Final = 300.0
CONNECTIONS: Final = 4
ROWS_PER_TRANSACTION: Final = 1000
_SCRATCH: Final = "bench_projector_baseline"


def decided_events(count: int) -> list[EventEnvelope]:
    """The sealed events of `count` inbound commands (plus registrations), fresh tenants."""
    return [event for chunk in decided_chunks(count, count + TENANTS) for event in chunk]


def decided_chunks(count: int, chunk: int) -> Iterator[list[EventEnvelope]]:
    """`decided_events`, about `chunk` commands' events at a time."""
    books: dict[object, TenantBook] = {}
    out: list[EventEnvelope] = []
    now = datetime.now(UTC)
    for command in command_stream(count, fresh_tenants=True):
        book = books.setdefault(command.tenant_id, TenantBook(command.tenant_id))
        for draft, event in book.decide(command, now):
            envelope = seal(draft, book.head)
            book.record(envelope, event)
            out.append(envelope)
        if len(out) >= chunk:
            yield out
            out = []
    if out:
        yield out


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
    # The projector runs in a process of its own; here it shares one with the bench's events,
    # which the garbage collector would otherwise scan over and over. Frozen, they are not.
    gc.collect()
    gc.freeze()
    started = time.perf_counter()
    task = asyncio.create_task(
        run_projector(
            infra.bootstrap_servers, infra.database_url, stop, topic=topic, connections=CONNECTIONS
        )
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
        gc.unfreeze()
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


_SAME_ROWS_TABLES: Final = ("event_archive", "conversations", "contacts", "messages")
_SAME_ROWS_SQL: Final = {
    "event_archive": "INSERT INTO bench_raw_event_archive VALUES ($1, $2, $3, $4, $5, $6::jsonb, "
    "$7, $8, $9, $10) ON CONFLICT DO NOTHING",
    "conversations": "INSERT INTO bench_raw_conversations (tenant_id, conversation_id, contact, "
    "sender, state, started_at, updated_at) VALUES ($1, $2, $3, $4, 'bot', $5, $5) "
    "ON CONFLICT DO NOTHING",
    "contacts": "INSERT INTO bench_raw_contacts (tenant_id, contact, opted_out, updated_at) "
    "VALUES ($1, $2, false, $3) ON CONFLICT DO NOTHING",
    "messages": "INSERT INTO bench_raw_messages (tenant_id, message_id, conversation_id, "
    "direction, author, body, media, twilio_sid, status, created_at, tenant_seq) "
    "VALUES ($1, $2, $3, 'inbound', 'contact', $4, $5::jsonb, $2, 'received', $6, $7) "
    "ON CONFLICT DO NOTHING",
    "moved": "UPDATE bench_raw_conversations SET last_message_at = $3, last_message_preview = $4,"
    " unread_count = unread_count + 1, updated_at = greatest(updated_at, $5), "
    "window_open_until = greatest(window_open_until, $6) "
    "WHERE tenant_id = $1 AND conversation_id = $2",
}


def _same_rows(events: list[EventEnvelope]) -> list[dict[str, list[tuple[object, ...]]]]:
    """Per 1,000 events, the rows the projector writes for them, statement by statement."""
    chunks: list[dict[str, list[tuple[object, ...]]]] = []
    for start in range(0, len(events), ROWS_PER_TRANSACTION):
        rows: dict[str, list[tuple[object, ...]]] = {name: [] for name in _SAME_ROWS_SQL}
        for offset, e in enumerate(events[start : start + ROWS_PER_TRANSACTION], start):
            key, value, headers = encode_event(e)
            rows["event_archive"].append(("bench", 0, offset, key, value, headers_to_json(headers),
                                          0, e.tenant_id, e.tenant_seq, e.hash))  # fmt: skip
            p, at = e.payload, e.recorded_at
            if e.type == "ConversationStarted":
                cid = UUID(p["conversation_id"])
                rows["conversations"].append((e.tenant_id, cid, p["contact"], p["sender"], at))
                rows["contacts"].append((e.tenant_id, p["contact"], at))
            elif e.type == "InboundMessageReceived":
                cid, received = UUID(p["conversation_id"]), datetime.fromisoformat(p["received_at"])
                rows["messages"].append((e.tenant_id, p["message_sid"], cid, p["body"],
                                         orjson.dumps(p["media"]).decode(), received,
                                         e.tenant_seq))  # fmt: skip
                window = datetime.fromisoformat(p["window_open_until"])
                rows["moved"].append((e.tenant_id, cid, received, p["body"][:200], at, window))
        chunks.append(rows)
    return chunks


async def same_rows_rate(
    database_url: str, events: list[EventEnvelope], archive: bool = True
) -> Rate:
    """Raw `executemany` of the rows the projector writes, into copies of its tables with their
    indexes (the full-text one included) but without row-level security, role switches,
    decoding, checkpoints or per-tenant batching; 1,000 events per transaction. Without
    `archive`, the read models' rows only (what a rebuild writes)."""
    chunks = _same_rows(events)
    conn = await asyncpg.connect(database_url)
    try:
        for table in _SAME_ROWS_TABLES:
            await conn.execute(f"CREATE TABLE bench_raw_{table} (LIKE {table} INCLUDING ALL)")
        started = time.perf_counter()
        for rows in chunks:
            async with conn.transaction():
                for name, sql in _SAME_ROWS_SQL.items():
                    if rows[name] and (archive or name != "event_archive"):
                        await conn.executemany(sql, rows[name])
        elapsed = time.perf_counter() - started
        for table in _SAME_ROWS_TABLES:
            await conn.execute(f"DROP TABLE bench_raw_{table}")
    finally:
        await conn.close()
    return Rate(len(events), elapsed)


def describe(events: list[EventEnvelope]) -> str:
    kinds = Counter(e.type for e in events)
    return ", ".join(f"{n:,} {kind}" for kind, n in kinds.most_common()) + f"; {TENANTS} tenants"
