"""The projector SIGKILLed ten times while it projects 20,000 events: the read models it ends
with are exactly those of one uninterrupted pass from offset 0 (a checksum of every table)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from benchmarks.projector_bench import decided_events
from projections.checkpoints import partition_offsets
from projections.database import connect
from projections.migrations import migrate
from streams.log import append
from tests.conftest import drop_database, fresh_database
from tests.integration.test_projector import caught_up, ends, eventually, projector

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
KILLS = 10
# Every table the projector writes, in a stable order (superuser: RLS does not hide rows); the
# checkpoints without their wall-clock `updated_at`.
TABLES = {
    "tenants": "tenant_id",
    "tenant_senders": "tenant_id, sender",
    "conversations": "tenant_id, conversation_id",
    "messages": "tenant_id, message_id",
    "contacts": "tenant_id, contact",
    "command_results": "tenant_id, command_id",
    "conversation_facts": "tenant_id, event_id",
    "event_archive": 'topic, partition, "offset"',
    "(SELECT projection, topic, partition, next_offset FROM projection_checkpoints)": (
        "projection, topic, partition"
    ),
    "projection_tenant_seq": "projection, tenant_id",
}
_RUN = """
import asyncio, sys
from projections.runner import run_projector
asyncio.run(run_projector(sys.argv[1], sys.argv[2], asyncio.Event(), topic=sys.argv[3]))
"""


async def checksums(conn: asyncpg.Connection) -> dict[str, tuple[int, str]]:
    out = {}
    for table, order in TABLES.items():
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY {order}), '')) "  # noqa: S608 - constants
            f"AS sum FROM {table} t"
        )
        assert row is not None
        out[table] = (row["n"], row["sum"])
    return out


async def test_ten_sigkills_leave_the_read_models_of_one_clean_pass(
    bootstrap_servers: str,
    server_url: str,
    database_url: str,
    migrated: asyncpg.Connection,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    events = decided_events(20_000)
    assert len(events) > 20_000
    positions = []
    for start in range(0, len(events), 2000):
        positions += await append(producer, events[start : start + 2000], topic)
    expected = ends(positions)
    done = caught_up(migrated, topic, expected, "conversations")

    total, progress = sum(expected.values()), []
    rng = random.Random(20261125)
    targets = sorted(rng.uniform(0.05, 0.9) * total for _ in range(KILLS))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for target in targets:
        child = subprocess.Popen(  # noqa: ASYNC220 - killed below, never awaited
            [sys.executable, "-c", _RUN, bootstrap_servers, database_url, topic],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # Kill as soon as the projector has passed the target, i.e. in the middle of its work.
        for _ in range(600):
            if sum((await partition_offsets(migrated, "conversations", topic)).values()) >= target:
                break
            await asyncio.sleep(rng.uniform(0.005, 0.03))
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL, "the projector ended by itself"
        progress.append(sum((await partition_offsets(migrated, "conversations", topic)).values()))
    # The kills landed while there was work left (not all before start-up or after the end).
    assert sum(0 < done_so_far < total for done_so_far in progress) >= KILLS // 2, progress
    async with projector(bootstrap_servers, database_url, topic) as task:
        await eventually(task, done)
    crashed = await checksums(migrated)

    clean_url = await fresh_database(server_url)
    try:
        clean = await connect(clean_url)
        try:
            await migrate(clean)
            async with projector(bootstrap_servers, clean_url, topic) as task:
                await eventually(task, caught_up(clean, topic, expected, "conversations"))
            assert await checksums(clean) == crashed
        finally:
            await clean.close()
    finally:
        await drop_database(server_url, clean_url)
    assert crashed["messages"][0] == 20_000
    assert crashed["event_archive"][0] == len(events)
