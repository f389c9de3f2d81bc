"""SIGKILL the decider at random points while 2,000 webhooks arrive: each is recorded once."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from events.chain import ChainVerifier
from events.envelope import EventEnvelope
from streams import kafka
from streams.log import read_all
from streams.topics import EVENTS
from tests.e2e.platform import env_for
from tests.integration import twilio_driver as wh
from tests.integration.test_decider import register, send
from tests.integration.twilio_driver import add_tenant, app_client, post

pytestmark = pytest.mark.e2e
MESSAGES, CONVERSATIONS, KILLS = 2000, 50, 3


def _decider(servers: str, database: str, state: Path, log: Path) -> subprocess.Popen[bytes]:
    env = env_for(
        state,
        KAFKA_BOOTSTRAP_SERVERS=servers,
        DATABASE_URL=database,
        ZAPFLOW_INSTANCE_ID="crash-test",  # static membership: a restart takes the partitions back
        ZAPFLOW_GROUP_SESSION_TIMEOUT_MS="6000",
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "zapflow", "worker", "decider"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


async def _tenant_events(servers: str, tenant: uuid.UUID) -> list[EventEnvelope]:
    consumer = kafka.groupless_consumer(servers)
    await consumer.start()
    try:
        return [e async for _, e in read_all(consumer, EVENTS) if e.tenant_id == tenant]
    finally:
        await consumer.stop()


async def test_sigkilled_decider_loses_and_duplicates_nothing(
    fresh_broker: str, server_url: str, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    rng = random.Random(20261125)
    twilio = await add_tenant(db)  # in the directory the API reads
    tenant = twilio.tenant_id
    log = tmp_path / "decider.log"
    producer = kafka.producer(fresh_broker)
    await producer.start()
    decider = _decider(fresh_broker, server_url, tmp_path, log)
    client = app_client(fresh_broker, database_url)
    try:
        client.__enter__()
        await send(producer, register(tenant, twilio.account_sid, twilio.sender))
        webhooks = [
            wh.inbound(
                twilio,
                f"SM{i:032d}",
                From=f"whatsapp:+55119{i % CONVERSATIONS:08d}",
                Body=f"msg {i}",
            )
            for i in range(MESSAGES)
        ]
        retried = rng.sample(webhooks, MESSAGES // 5)  # Twilio retries: the same webhook again
        stream = webhooks + retried
        rng.shuffle(stream)
        steps = range(0, len(stream), 50)
        kill_after, kills = set(rng.sample(steps[4:-4], KILLS)), 0
        for index in steps:
            for params in stream[index : index + 50]:
                assert post(client, twilio, params).status_code == 200
            if index in kill_after:
                assert decider.poll() is None, log.read_text()[-2000:]
                decider.send_signal(signal.SIGKILL)
                kills += 1
                decider.wait()
                decider = _decider(fresh_broker, server_url, tmp_path, log)
            await asyncio.sleep(rng.uniform(0.05, 0.4))
            assert decider.poll() is None, log.read_text()[-2000:]

        events: list[EventEnvelope] = []
        for _ in range(120):
            events = await _tenant_events(fresh_broker, tenant)
            if sum(e.type == "InboundMessageReceived" for e in events) >= MESSAGES:
                break
            assert decider.poll() is None, log.read_text()[-2000:]
            await asyncio.sleep(1)
    finally:
        client.__exit__(None, None, None)
        decider.send_signal(signal.SIGTERM)
        try:
            decider.wait(timeout=15)
        except subprocess.TimeoutExpired:
            decider.kill()
        await producer.stop()

    verifier = ChainVerifier()
    for envelope in events:
        verifier.feed(envelope)
    if not verifier.ok:
        seq = verifier.issues[0].tenant_seq
        clash = [(e.tenant_seq, e.type, str(e.causation_id)[:8], e.recorded_at.isoformat())
                 for e in events if seq - 2 <= e.tenant_seq <= seq + 1]  # fmt: skip
        rebuilt = [
            line for line in log.read_text().splitlines() if "rebuilt" in line or "WARN" in line
        ]
        raise AssertionError(f"{verifier.issues[:2]}\n{clash}\n" + "\n".join(rebuilt[-30:]))
    unique = {e.tenant_seq: e for e in events}
    assert sorted(unique) == list(range(1, len(unique) + 1)), "tenant_seq has gaps"
    per_sid = Counter(
        e.payload["message_sid"] for e in unique.values() if e.type == "InboundMessageReceived"
    )
    assert len(per_sid) == MESSAGES, f"{MESSAGES - len(per_sid)} messages missing"
    assert set(per_sid.values()) == {1}
    assert kills == KILLS
