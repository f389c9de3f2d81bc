"""The event archive keeps every record byte for byte; a fresh broker's log is restored from it."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from events.chain import verify_chain
from events.envelope import encode_event
from projections.migrations import migrate
from streams import kafka
from streams.log import append, read_all
from streams.restore import RestoreRefused, log_is_empty, restore
from streams.topics import EVENTS
from tests.builders import chain
from tests.integration.test_projector import eventually, projector
from zapflow.devbroker import start_dev_broker
from zapflow.setup import ensure_topics_on

pytestmark = pytest.mark.integration

type Raw = dict[tuple[int, int], tuple[bytes | None, bytes, tuple[tuple[str, bytes], ...]]]


async def _raw(servers: str) -> Raw:
    """(partition, offset) → (key, value, headers) of every record in the events topic."""
    consumer: AIOKafkaConsumer = kafka.groupless_consumer(servers)
    await consumer.start()
    found: Raw = {}
    try:
        async for position, envelope in read_all(consumer, EVENTS):
            key, value, headers = encode_event(envelope)
            found[(position.partition, position.offset)] = (key, value, tuple(headers))
    finally:
        await consumer.stop()
    return found


async def _archived(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval("SELECT count(*) FROM event_archive")
    return count


async def test_archive_then_restore_into_a_new_broker_keeps_every_offset(
    fresh_broker: str, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(db)
    tenants = [uuid.uuid4() for _ in range(4)]
    events = [e for tenant in tenants for e in chain(tenant, 30)]
    producer = kafka.producer(fresh_broker)
    await producer.start()
    try:
        await append(producer, events)
        await append(producer, events[:7])  # at-least-once duplicates are archived too
    finally:
        await producer.stop()
    original = await _raw(fresh_broker)
    assert len(original) == len(events) + 7

    async with projector(fresh_broker, database_url, EVENTS) as task:
        await eventually(task, lambda: _counts_match(db, len(original)))

    second = start_dev_broker(0, tmp_path / "second.log")  # the dev broker restarted: empty
    try:
        await ensure_topics_on(second.bootstrap_servers, partitions=12)
        assert await log_is_empty(second.bootstrap_servers)
        report = await restore(second.bootstrap_servers, database_url)
        assert report.total == len(original)
        restored = await _raw(second.bootstrap_servers)
        assert restored == original  # same partitions, offsets, keys, bytes and headers

        consumer = kafka.groupless_consumer(second.bootstrap_servers)
        await consumer.start()
        try:
            again = [e async for _, e in read_all(consumer, EVENTS)]
        finally:
            await consumer.stop()
        for tenant in tenants:
            verifier = verify_chain([e for e in again if e.tenant_id == tenant])
            assert verifier.ok
            assert verifier.duplicates == sum(e.tenant_id == tenant for e in events[:7])

        with pytest.raises(RestoreRefused, match="not empty"):
            await restore(second.bootstrap_servers, database_url)
        assert (
            await restore(second.bootstrap_servers, database_url, only_if_empty=True)
        ).total == 0
    finally:
        second.stop()


async def _counts_match(db: asyncpg.Connection, expected: int) -> bool:
    return await _archived(db) == expected


async def test_a_hole_in_the_archive_refuses_to_restore(
    fresh_broker: str, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(db)
    producer = kafka.producer(fresh_broker)
    await producer.start()
    try:
        await append(producer, chain(uuid.uuid4(), 10))
    finally:
        await producer.stop()
    async with projector(fresh_broker, database_url, EVENTS) as task:
        await eventually(task, lambda: _counts_match(db, 10))
    await db.execute('DELETE FROM event_archive WHERE "offset" = 4')

    second = start_dev_broker(0, tmp_path / "second.log")
    try:
        await ensure_topics_on(second.bootstrap_servers, partitions=12)
        with pytest.raises(RestoreRefused, match="jumps from offset 3 to 5"):
            await restore(second.bootstrap_servers, database_url)
    finally:
        second.stop()


async def test_a_poison_record_is_archived_and_restored_like_any_other(
    fresh_broker: str, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await migrate(db)
    tenant = uuid.uuid4()
    events = chain(tenant, 6)
    producer = kafka.producer(fresh_broker)
    await producer.start()
    try:
        first = await append(producer, events[:3])
        junk = await producer.send_and_wait(
            EVENTS, b"not an event", key=str(tenant).encode(), partition=first[0].partition
        )
        await append(producer, events[3:])
    finally:
        await producer.stop()

    async with projector(fresh_broker, database_url, EVENTS, retry_after_s=60) as task:
        await eventually(task, lambda: _counts_match(db, 7))  # the projections stop at the junk
    row = await db.fetchrow(
        'SELECT value, tenant_id FROM event_archive WHERE partition = $1 AND "offset" = $2',
        junk.partition,
        junk.offset,
    )
    assert row is not None
    assert (bytes(row["value"]), row["tenant_id"]) == (b"not an event", None)

    second = start_dev_broker(0, tmp_path / "second.log")
    try:
        await ensure_topics_on(second.bootstrap_servers, partitions=12)
        assert (await restore(second.bootstrap_servers, database_url)).total == 7
    finally:
        second.stop()
