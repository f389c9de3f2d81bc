"""Issue #7: the development broker restarts with an empty log while 5,000+ events are archived;
the next `zapflow up` restores the log byte for byte per partition, the projections continue
from their checkpoints (no rebuild), and new events chain on."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import TopicPartition
from twilio.request_validator import RequestValidator

from events.chain import verify_chain
from projections import status
from streams import kafka
from streams.topics import EVENTS
from tests.e2e.platform import Platform, env_for, start
from tests.e2e.test_inbound_flow import _events

pytestmark = pytest.mark.e2e
EVENTS_WANTED = 5_000
TENANTS = (("AC" + "1a" * 16, "whatsapp:+14155230001"), ("AC" + "2b" * 16, "whatsapp:+14155230002"))
TOKEN = "twilio-auth-token-restore"  # a test fixture, not a credential

type Raw = tuple[int, bytes | None, bytes | None, tuple[tuple[str, bytes], ...]]


def _tenant(state: Path, account: str, sender: str) -> uuid.UUID:
    result = subprocess.run(
        [sys.executable, "-m", "zapflow", "tenants", "create", "--name", f"T {sender[-4:]}",
         "--twilio-account-sid", account, "--twilio-auth-token", "-", "--sender", sender],
        input=TOKEN + "\n", env=env_for(state), capture_output=True, text=True, check=False,
        timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return uuid.UUID(orjson.loads(result.stdout)["tenant_id"])


def _post(http: httpx.Client, platform: Platform, tenant: uuid.UUID, n: int, who: int,
          account: str, sender: str) -> None:  # fmt: skip
    path = f"/v1/tenants/{tenant}/twilio/messages"
    params = {"MessageSid": f"SM{n:032x}", "AccountSid": account, "To": sender,
              "From": f"whatsapp:+55119{who:08d}", "Body": f"mensagem {n}",
              "NumMedia": "0"}  # fmt: skip
    signature = RequestValidator(TOKEN).compute_signature(
        f"http://localhost:{platform.port}{path}", params
    )
    answer = http.post(path, data=params, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 200, answer.text


async def _raw_log(servers: str) -> dict[int, list[Raw]]:
    """Every record of every partition of zapflow.events, as bytes."""
    consumer = kafka.groupless_consumer(servers)
    await consumer.start()
    try:
        partitions = await status.topic_partitions(consumer, EVENTS)
        ends = await status.log_ends(consumer, EVENTS, partitions, {})
        out: dict[int, list[Raw]] = {p: [] for p in partitions}
        tps = [TopicPartition(EVENTS, p) for p in partitions]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        while any(len(out[p]) < ends[p] for p in partitions):
            batch = await consumer.getmany(timeout_ms=2000, max_records=5000)
            assert batch, {p: (len(out[p]), ends[p]) for p in partitions}
            for tp, records in batch.items():
                out[tp.partition] += [
                    (r.offset, r.key, r.value, tuple(r.headers)) for r in records
                    if r.offset < ends[tp.partition]
                ]  # fmt: skip
        return out
    finally:
        await consumer.stop()


async def _archived(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM event_archive WHERE topic = $1",
                                       EVENTS))  # fmt: skip
    finally:
        await conn.close()


async def _versions(database_url: str) -> list[tuple[str, int, str]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT projection, version, state FROM projection_versions "
                                "ORDER BY 1, 2")  # fmt: skip
        return [(r["projection"], r["version"], r["state"]) for r in rows]
    finally:
        await conn.close()


def test_an_emptied_log_comes_back_byte_for_byte_and_the_platform_carries_on(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    platform = start(state, ZAPFLOW_AGENT_DEBOUNCE_S="30")  # the agent stays out of the way
    try:
        platform.wait_ready()
        tenants = [(_tenant(state, account, sender), account, sender)
                   for account, sender in TENANTS]  # fmt: skip
        with httpx.Client(base_url=platform.url, timeout=10) as http:
            for n in range(EVENTS_WANTED):
                tenant, account, sender = tenants[n % 2]
                _post(http, platform, tenant, n, n % 50, account, sender)
        servers = str(platform.runtime()["bootstrap_servers"])
        database = str(platform.runtime()["database_url"])
        deadline = time.monotonic() + 120
        before = asyncio.run(_raw_log(servers))
        total = sum(len(records) for records in before.values())
        while asyncio.run(_archived(database)) < total:  # the projector archived all of it
            assert time.monotonic() < deadline, "the archive did not catch up"
            time.sleep(0.5)
        before = asyncio.run(_raw_log(servers))  # anything appended while waiting
        versions = asyncio.run(_versions(database))
    finally:
        code, output = platform.interrupt()
    assert code == 0, output
    assert sum(len(r) for r in before.values()) > EVENTS_WANTED

    again = start(state, ZAPFLOW_AGENT_DEBOUNCE_S="30")  # a new broker, its log empty
    try:
        again.wait_ready()
        servers = str(again.runtime()["bootstrap_servers"])
        database = str(again.runtime()["database_url"])
        after = asyncio.run(_raw_log(servers))
        tenant, account, sender = tenants[0]
        with httpx.Client(base_url=again.url, timeout=10) as http:
            _post(http, again, tenant, EVENTS_WANTED + 1, 7, account, sender)
        events = asyncio.run(_events(servers, tenant))
        deadline = time.monotonic() + 60
        new_body = f"mensagem {EVENTS_WANTED + 1}"
        while not any(e.payload.get("body") == new_body for _, e in events):
            assert time.monotonic() < deadline, [e.type for _, e in events[-3:]]
            time.sleep(0.5)
            events = asyncio.run(_events(servers, tenant))
        projected = _wait_projected(database, tenant, f"mensagem {EVENTS_WANTED + 1}")
        versions_after = asyncio.run(_versions(database))
    finally:
        code, output = again.interrupt()
    assert code == 0, output
    assert "restored" in output
    # Byte for byte, per partition: offsets, keys, values, headers.
    assert {p: records for p, records in after.items() if records} == {
        p: records for p, records in before.items() if records
    }
    # The new event chains on the restored ones; the projections went on without a rebuild.
    chain = verify_chain([e for _, e in events])
    assert chain.ok, chain.issues
    restored_seq = max(e.tenant_seq for at, e in events if at.offset < len(after[at.partition]))
    (arrived,) = [e for _, e in events if e.payload.get("body") == new_body]
    assert arrived.tenant_seq > restored_seq
    assert projected
    assert versions_after == versions


def _wait_projected(database: str, tenant: uuid.UUID, body: str) -> bool:
    async def look() -> bool:
        conn = await asyncpg.connect(database)
        try:
            found = await conn.fetchval(
                "SELECT 1 FROM messages WHERE tenant_id = $1 AND body = $2", tenant, body
            )
            return bool(found)
        finally:
            await conn.close()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if asyncio.run(look()):
            return True
        time.sleep(0.5)
    return False
