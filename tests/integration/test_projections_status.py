"""`zapflow projections status` against the real broker and PostgreSQL: lag, stops, recovery."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from events.chain import GENESIS, head_of, seal
from projections import status, tenants
from projections.batch import checkpoint_names
from projections.runner import PROJECTIONS
from projections.status import PartitionStatus
from streams import kafka
from streams.log import append
from streams.topics import EVENTS
from tests.builders import chain, tenant_registered
from tests.integration.test_projector import (
    NAMESPACE,
    PARTITIONS,
    Flaky,
    caught_up,
    ends,
    eventually,
    projector,
    registered,
)
from zapflow.cli import main

pytestmark = pytest.mark.integration

NAMES = checkpoint_names(PROJECTIONS)


async def report(brokers: str, conn: asyncpg.Connection, topic: str) -> list[PartitionStatus]:
    """What the command computes, for a topic of the test's own."""
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        partitions = await status.topic_partitions(consumer, topic)
        return await status.report(conn, consumer, topic, partitions, NAMES)
    finally:
        await consumer.stop()


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_broker: str, database_url: str
) -> None:
    """Settings of the command: this test's broker and database, no running `zapflow up`."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fresh_broker)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ZAPFLOW_STATE_DIR", str(tmp_path))


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    """`zapflow ARGV`: exit code, printed JSON, stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:  # in a thread: the command runs its own event loop
        code = await asyncio.to_thread(main, list(argv))
    finally:  # the command configures logging for a process of its own
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, orjson.loads(out) if out else None, err


async def run_status(capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    """`zapflow projections status`."""
    return await run_cli(capsys, "projections", "status")


async def test_lag_counts_the_records_not_yet_projected(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    ids = [uuid.uuid5(NAMESPACE, f"status-{i}") for i in range(3)]
    firsts = {tenant: registered(tenant)[0] for tenant in ids}
    positions = await append(producer, list(firsts.values()), topic)
    async with projector(bootstrap_servers, database_url, topic) as task:
        await eventually(task, caught_up(migrated, topic, ends(positions)))

    used = ends(positions)
    rows = await report(bootstrap_servers, migrated, topic)
    assert [(r.projection, r.partition) for r in rows] == [
        (name, p) for name in NAMES for p in range(PARTITIONS)
    ]
    for row in rows:
        end = used.get(row.partition, 0)
        assert (row.log_end, row.next_offset, row.lag) == (end, end, 0), row
        assert row.state == ("running" if row.partition in used else "not started")

    # Two appends, the second of two records per tenant: each partition then ends with a batch
    # of several records, where the dev broker's ListOffsets answers one too few (ADR 0006).
    more = {tenant: chain(tenant, 3, head_of(first)) for tenant, first in firsts.items()}
    appended = await append(producer, [events[0] for events in more.values()], topic)
    appended += await append(producer, [e for events in more.values() for e in events[1:]], topic)
    expected_lag = Counter(position.partition for position in appended)

    for row in await report(bootstrap_servers, migrated, topic):
        assert row.lag == expected_lag.get(row.partition, 0), row
        assert row.log_end == used.get(row.partition, 0) + row.lag
        assert row.state == ("running" if row.partition in used else "not started")


async def test_a_stopped_partition_is_reported_until_it_projects_again(
    fresh_broker: str,
    database_url: str,
    migrated: asyncpg.Connection,
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sick = uuid.uuid5(NAMESPACE, "status-sick")
    good = seal(tenant_registered(sick), GENESIS)
    poison = seal(tenant_registered(sick, 1, twilio_account_sid="not-a-sid"), head_of(good))
    after = chain(sick, 1, head_of(poison))
    producer = kafka.producer(fresh_broker)
    await producer.start()
    try:
        _, stuck, _ = await append(producer, [good, poison, *after], EVENTS)
    finally:
        await producer.stop()

    async def recorded() -> bool:
        stopped = await status.stopped_offsets(migrated, NAMES, EVENTS)
        return stopped == {stuck.partition: stuck.offset}

    async with projector(fresh_broker, database_url, EVENTS, retry_after_s=0.2) as task:
        await eventually(task, recorded)
        code, rows, _ = await run_status(capsys)

    assert code == 1
    assert len(rows) == len(NAMES) * PARTITIONS
    on_stuck = [row for row in rows if row["partition"] == stuck.partition]
    assert {row["projection"] for row in on_stuck} == set(NAMES)
    for row in on_stuck:
        assert row["state"] == "stopped"
        assert row["stopped_offset"] == stuck.offset
        assert row["log_end"] == stuck.offset + 2
        assert row["error"].startswith("tenant_directory failed: ValidationError: ")
        assert "twilio_account_sid" in row["error"]
        assert "\n" not in row["error"]
        assert row["event_id"] == str(poison.event_id)
        assert row["tenant_id"] == str(sick)
        assert row["attempts"] >= 1
    directory = next(row for row in on_stuck if row["projection"] == "tenant_directory")
    assert (directory["next_offset"], directory["lag"]) == (stuck.offset, 2)
    assert all(row["state"] == "not started" for row in rows if row not in on_stuck)

    # Still reported with no projector running; then an operator skips the poison, and the
    # next projector clears the stop once it projects the record after it.
    assert (await run_status(capsys))[0] == 1
    await migrated.execute(
        "UPDATE projection_checkpoints SET next_offset = GREATEST(next_offset, $1) "
        "WHERE topic = $2 AND partition = $3",
        stuck.offset + 1,
        EVENTS,
        stuck.partition,
    )
    async with projector(fresh_broker, database_url, EVENTS) as task:
        await eventually(task, caught_up(migrated, EVENTS, {stuck.partition: stuck.offset + 2}))
        await eventually(task, lambda: _none_stopped(migrated))

    code, rows, _ = await run_status(capsys)
    assert code == 0
    for row in rows:
        stuck_here = row["partition"] == stuck.partition
        assert row["state"] == ("running" if stuck_here else "not started")
        assert row["lag"] == 0
        assert row["error"] is None


async def _none_stopped(conn: asyncpg.Connection) -> bool:
    return not await status.stopped_offsets(conn, NAMES, EVENTS)


async def test_a_transient_failure_is_reported_while_it_lasts(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    tenant = uuid.uuid5(NAMESPACE, "status-flaky")
    events = registered(tenant, extra=2)
    flaky = Flaky(fail_on=events[1].event_id, failures=2)
    positions = await append(producer, events, topic)
    names = checkpoint_names((*PROJECTIONS, flaky))
    seen: list[asyncpg.Record] = []

    async def stop_recorded() -> bool:
        seen.extend(await migrated.fetch("SELECT * FROM projection_status WHERE topic = $1", topic))
        return bool(seen)

    async with projector(
        bootstrap_servers, database_url, topic, (*PROJECTIONS, flaky), retry_after_s=0.5
    ) as task:
        await eventually(task, stop_recorded)
        await eventually(task, caught_up(migrated, topic, ends(positions), "flaky"))
        await eventually(task, lambda: _no_rows(migrated, topic))

    assert {row["projection"] for row in seen} == set(names)
    assert {row["error"] for row in seen} == {"flaky failed: RuntimeError: transient"}
    assert {row["stopped_offset"] for row in seen} == {positions[1].offset}
    assert flaky.attempts == 3


async def _no_rows(conn: asyncpg.Connection, topic: str) -> bool:
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT FROM projection_status WHERE topic = $1)", topic
    )
    return found is False


async def test_a_log_ending_before_the_checkpoint_is_reported_until_it_gets_there(
    bootstrap_servers: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    tenant = uuid.uuid5(NAMESPACE, "status-short")
    first = registered(tenant)[0]
    (position,) = await append(producer, [first], topic)
    for name in NAMES:  # as after a dev broker restart, before the log is restored
        await migrated.execute(
            "INSERT INTO projection_checkpoints (projection, topic, partition, next_offset) "
            "VALUES ($1, $2, $3, 3)",
            *(name, topic, position.partition),
        )
    query = "SELECT * FROM projection_status WHERE topic = $1 AND projection = $2"

    async def stopped() -> bool:
        return await migrated.fetchrow(query, topic, tenants.NAME) is not None

    async with projector(bootstrap_servers, database_url, topic, retry_after_s=0.2) as task:
        await eventually(task, stopped)
        before = await migrated.fetchrow(query, topic, tenants.NAME)
        await asyncio.sleep(1.0)  # retries, which may re-read offset 0 below the stop
        during = await migrated.fetchrow(query, topic, tenants.NAME)
        await append(producer, chain(tenant, 2, head_of(first)), topic)  # the log reaches 3
        await eventually(task, lambda: _no_rows(migrated, topic))

    assert before is not None
    assert during is not None
    assert before["error"] == during["error"] == "the log ends at offset 1, before the checkpoint 3"
    assert (before["stopped_offset"], before["partition"]) == (3, position.partition)
    assert during["stopped_at"] == before["stopped_at"], "not cleared in between"
    assert during["attempts"] > before["attempts"]
    rows = await report(bootstrap_servers, migrated, topic)
    for row in (r for r in rows if r.partition == position.partition):
        assert (row.state, row.next_offset, row.log_end, row.lag) == ("running", 3, 3, 0)


async def test_bad_configuration_is_one_line_and_exit_code_2(
    cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, rows, err = await run_status(capsys)  # the database was never migrated

    assert (code, rows) == (2, None)
    assert err.count("\n") == 1
    assert "DATABASE_URL=" in err
    assert "run `zapflow setup`" in err
