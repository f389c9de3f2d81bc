"""The projector against the real broker and PostgreSQL: rows, duplicates, restarts, poison."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from events.chain import GENESIS, head_of, seal
from events.envelope import EventEnvelope
from projections import tenants
from projections.batch import checkpoint_names
from projections.checkpoints import partition_offsets
from projections.database import Conn
from projections.runner import PROJECTIONS, Projection, run_projector
from projections.tenants import TenantRecord, get_tenant, tenant_by_api_key_hash
from streams.log import Position, append
from tests.builders import chain, tenant_registered

pytestmark = pytest.mark.integration

PARTITIONS = 12
TIMEOUT_S = 20.0
NAMESPACE = uuid.UUID("6f1c9a52-0d7e-4b5a-9a43-4f3f3c2b1a00")


@asynccontextmanager
async def projector(
    bootstrap_servers: str,
    database_url: str,
    topic: str,
    projections: Sequence[Projection] = PROJECTIONS,
    retry_after_s: float = 5.0,
) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_projector(
            bootstrap_servers,
            database_url,
            stop,
            projections,
            topic=topic,
            retry_after_s=retry_after_s,
        )
    )
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)


async def eventually(task: asyncio.Task[None], check: Callable[[], Awaitable[bool]]) -> None:
    """Poll `check` until it holds; fail early if the projector died."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not await check():
        if task.done():
            task.result()
            raise AssertionError("the projector stopped by itself")
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {TIMEOUT_S} s")
        await asyncio.sleep(0.1)


def ends(positions: Sequence[Position]) -> dict[int, int]:
    """partition → offset after the last record written there."""
    found: dict[int, int] = {}
    for position in positions:
        found[position.partition] = max(found.get(position.partition, 0), position.offset + 1)
    return found


def caught_up(
    conn: Conn, topic: str, expected: dict[int, int], projection: str = tenants.NAME
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        offsets = await partition_offsets(conn, projection, topic)
        return all(offsets.get(p, 0) >= end for p, end in expected.items())

    return check


def registered(tenant_id: uuid.UUID, extra: int = 0) -> list[EventEnvelope]:
    """A tenant's registration (seq 1) followed by `extra` events the directory ignores."""
    first = seal(tenant_registered(tenant_id), GENESIS)
    return [first, *chain(tenant_id, extra, head_of(first))]


def expected_record(envelope: EventEnvelope) -> TenantRecord:
    payload = envelope.payload
    return TenantRecord(
        tenant_id=envelope.tenant_id,
        name=payload["name"],
        twilio_account_sid=payload["twilio_account_sid"],
        twilio_auth_token_encrypted=payload["twilio_auth_token_encrypted"],
        senders=frozenset(payload["senders"]),
        api_key_sha256=payload["api_key_sha256"],
    )


async def count(conn: Conn, table: str) -> int:
    value = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - fixed names
    assert isinstance(value, int)
    return value


class Recorder:
    """A projection added later: remembers what it was given."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[uuid.UUID, int]] = []

    async def apply(self, conn: Conn, envelope: EventEnvelope) -> None:
        self.seen.append((envelope.tenant_id, envelope.tenant_seq))


async def test_registered_tenants_are_in_the_directory(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    ids = [uuid.uuid5(NAMESPACE, f"a-{i}") for i in range(3)]
    written = {tenant: registered(tenant, extra=2) for tenant in ids}
    positions = await append(producer, [e for events in written.values() for e in events], topic)

    async with projector(bootstrap_servers, database_url, topic) as task:
        await eventually(task, caught_up(migrated, topic, ends(positions)))

    for tenant, events in written.items():
        record = expected_record(events[0])
        assert await get_tenant(migrated, tenant) == record
        assert await tenant_by_api_key_hash(migrated, record.api_key_sha256) == record
        last = await migrated.fetchval(
            "SELECT last_seq FROM projection_tenant_seq WHERE projection = $1 AND tenant_id = $2",
            tenants.NAME,
            tenant,
        )
        assert last == 3, "events the directory ignores still count as applied"
    assert await get_tenant(migrated, uuid.uuid4()) is None
    assert await tenant_by_api_key_hash(migrated, "0" * 64) is None


async def test_duplicates_in_the_log_change_nothing_and_the_checkpoint_reaches_the_end(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    ids = [uuid.uuid5(NAMESPACE, f"b-{i}") for i in range(4)]
    events = [e for tenant in ids for e in registered(tenant, extra=1)]
    positions = await append(producer, events, topic)
    positions += await append(producer, events, topic)  # an at-least-once re-append

    recorder = Recorder()  # not idempotent itself: only the sequence skip protects it
    async with projector(bootstrap_servers, database_url, topic, (*PROJECTIONS, recorder)) as t:
        await eventually(t, caught_up(migrated, topic, ends(positions)))
        positions += await append(producer, events, topic)  # and again, in a later batch
        await eventually(t, caught_up(migrated, topic, ends(positions)))

    assert sorted(recorder.seen) == sorted((e.tenant_id, e.tenant_seq) for e in events)
    assert await partition_offsets(migrated, tenants.NAME, topic) == ends(positions)
    assert await count(migrated, "tenants") == len(ids)
    assert await count(migrated, "tenant_senders") == 2 * len(ids)
    for tenant in ids:
        assert await get_tenant(migrated, tenant) == expected_record(registered(tenant)[0])


async def test_a_restarted_projector_resumes_from_its_checkpoint(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    first, kept, later = (uuid.uuid5(NAMESPACE, f"c-{i}") for i in range(3))
    positions = await append(producer, registered(first) + registered(kept), topic)
    async with projector(bootstrap_servers, database_url, topic) as task:
        await eventually(task, caught_up(migrated, topic, ends(positions)))

    # Forget `first` entirely, sequence included: only the checkpoint can keep it out now.
    await migrated.execute("DELETE FROM tenants WHERE tenant_id = $1", first)
    await migrated.execute("DELETE FROM projection_tenant_seq WHERE tenant_id = $1", first)
    # A record nobody can decode, put below the checkpoint: a projector that read its partition
    # from offset 0 instead of seeking would stop there.
    junk = await producer.send_and_wait(topic, b"not an event", key=str(first).encode())
    moved = await migrated.execute(
        "UPDATE projection_checkpoints SET next_offset = $1 WHERE topic = $2 AND partition = $3",
        junk.offset + 1,
        topic,
        junk.partition,
    )
    assert moved == f"UPDATE {len(checkpoint_names(PROJECTIONS))}"  # each projection + archive
    more = chain(first, 1, head_of(registered(first)[0])) + registered(later)
    positions += await append(producer, more, topic)

    async with projector(bootstrap_servers, database_url, topic) as task:
        await eventually(task, caught_up(migrated, topic, ends(positions)))

    assert await get_tenant(migrated, later) is not None
    assert await get_tenant(migrated, kept) is not None
    assert await get_tenant(migrated, first) is None, "re-read from before the checkpoint"
    last_seq = await migrated.fetchval(
        "SELECT last_seq FROM projection_tenant_seq WHERE tenant_id = $1", first
    )
    assert last_seq == 2, "the event after the checkpoint was applied"


async def test_a_poison_event_stops_its_partition_only(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sick = uuid.uuid5(NAMESPACE, "d-sick")
    good = seal(tenant_registered(sick), GENESIS)
    poison = seal(tenant_registered(sick, 1, twilio_account_sid="not-a-sid"), head_of(good))
    after = chain(sick, 1, head_of(poison))
    others = [uuid.uuid5(NAMESPACE, f"d-{i}") for i in range(4)]
    positions = await append(
        producer, [good, poison, *after, *(registered(t)[0] for t in others)], topic
    )
    stuck = positions[1]
    healthy = {p: end for p, end in ends(positions).items() if p != stuck.partition}
    placed = dict(zip(others, positions[3:], strict=True))
    elsewhere = [t for t in others if placed[t].partition != stuck.partition]
    assert elsewhere, "some other tenant must live on another partition"

    caplog.set_level(logging.ERROR, logger="zapflow.projector")
    async with projector(bootstrap_servers, database_url, topic, retry_after_s=0.2) as task:
        await eventually(task, caught_up(migrated, topic, healthy))
        await eventually(task, caught_up(migrated, topic, {stuck.partition: stuck.offset}))
        # While that partition is stopped, the others still take new events.
        more = chain(elsewhere[0], 1, head_of(registered(elsewhere[0])[0]))
        (late,) = await append(producer, more, topic)
        await eventually(task, caught_up(migrated, topic, {late.partition: late.offset + 1}))
        await asyncio.sleep(1.0)  # several retries of the stopped partition
        offsets = await partition_offsets(migrated, tenants.NAME, topic)

    assert offsets[stuck.partition] == stuck.offset, "the checkpoint stays on the poison"
    sick_record = await get_tenant(migrated, sick)
    assert sick_record == expected_record(good), "the events before the poison are projected"
    sick_seq = await migrated.fetchval(
        "SELECT last_seq FROM projection_tenant_seq WHERE tenant_id = $1", sick
    )
    assert sick_seq == good.tenant_seq, "nothing after the poison is applied"
    for tenant in others:
        behind_the_poison = tenant not in elsewhere
        assert (await get_tenant(migrated, tenant) is None) == behind_the_poison
    failures = [r for r in caplog.records if r.name == "zapflow.projector"]
    assert len(failures) >= 2, "the stopped partition is retried"
    assert {(r.__dict__["tenant_id"], r.__dict__["event_id"]) for r in failures} == {
        (poison.tenant_id, poison.event_id)
    }


async def test_a_log_that_ends_before_the_checkpoint_stops_its_partition(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant = uuid.uuid5(NAMESPACE, "g")
    (position,) = await append(producer, registered(tenant), topic)
    # As after a restart of the in-memory development broker without restoring its log.
    for name in checkpoint_names(PROJECTIONS):  # the archive's position and every projection's
        await migrated.execute(
            "INSERT INTO projection_checkpoints (projection, topic, partition, next_offset) "
            "VALUES ($1, $2, $3, 5)",
            name,
            topic,
            position.partition,
        )

    caplog.set_level(logging.ERROR, logger="zapflow.projector")
    async with projector(bootstrap_servers, database_url, topic, retry_after_s=0.2) as task:
        more = await append(producer, chain(tenant, 2, head_of(registered(tenant)[0])), topic)

        async def reported() -> bool:
            return any("before the checkpoint 5" in r.getMessage() for r in caplog.records)

        await eventually(task, reported)

    assert [p.offset for p in more] == [1, 2]
    assert await partition_offsets(migrated, tenants.NAME, topic) == {position.partition: 5}
    assert await get_tenant(migrated, tenant) is None


class Flaky:
    """A projection that fails the first `failures` times it meets one event."""

    name = "flaky"

    def __init__(self, fail_on: uuid.UUID, failures: int) -> None:
        self.fail_on, self.failures, self.attempts = fail_on, failures, 0

    async def apply(self, conn: Conn, envelope: EventEnvelope) -> None:
        if envelope.event_id == self.fail_on:
            self.attempts += 1
            if self.attempts <= self.failures:
                raise RuntimeError("transient")


async def test_a_transient_failure_heals_after_the_backoff(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    tenant = uuid.uuid5(NAMESPACE, "e")
    events = registered(tenant, extra=3)
    flaky = Flaky(fail_on=events[2].event_id, failures=2)
    positions = await append(producer, events, topic)

    with_flaky = (*PROJECTIONS, flaky)
    async with projector(bootstrap_servers, database_url, topic, with_flaky, 0.2) as task:
        await eventually(task, caught_up(migrated, topic, ends(positions), "flaky"))

    assert flaky.attempts == 3
    assert await partition_offsets(migrated, tenants.NAME, topic) == ends(positions)
    assert await get_tenant(migrated, tenant) == expected_record(events[0])


async def test_a_new_projection_starts_from_the_beginning_without_replaying_the_others(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    tenant = uuid.uuid5(NAMESPACE, "f")
    events = registered(tenant, extra=2)
    positions = await append(producer, events, topic)
    async with projector(bootstrap_servers, database_url, topic) as task:
        await eventually(task, caught_up(migrated, topic, ends(positions)))
    await migrated.execute("DELETE FROM tenants")
    await migrated.execute("DELETE FROM projection_tenant_seq")

    recorder = Recorder()
    async with projector(bootstrap_servers, database_url, topic, (*PROJECTIONS, recorder)) as t:
        await eventually(t, caught_up(migrated, topic, ends(positions), "recorder"))

    assert recorder.seen == [(tenant, seq) for seq in (1, 2, 3)]
    assert await get_tenant(migrated, tenant) is None, "the directory stayed at its checkpoint"
