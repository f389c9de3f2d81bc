"""The broker stops answering for 30 s during a stream of webhooks: all get 200, all land once."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import asyncpg
import pytest

from events.envelope import EventEnvelope
from streams import kafka
from streams.log import read_all
from streams.topics import EVENTS
from tests.e2e.test_decider_crash import _decider
from tests.integration import twilio_driver as wh
from tests.integration.test_decider import register, send
from zapflow.devbroker import start_dev_broker
from zapflow.setup import ensure_topics_on

pytestmark = pytest.mark.e2e
OUTAGE_S = 30.0
RATE_PER_S = 10


async def _inbound_events(servers: str) -> list[EventEnvelope]:
    consumer = kafka.groupless_consumer(servers)
    await consumer.start()
    try:
        return [
            e async for _, e in read_all(consumer, EVENTS) if e.type == "InboundMessageReceived"
        ]
    finally:
        await consumer.stop()


async def test_a_30_second_outage_loses_and_duplicates_nothing(
    server_url: str, database_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    broker = start_dev_broker(0, tmp_path / "tansu.log")
    servers = broker.bootstrap_servers
    decider = None
    try:
        await ensure_topics_on(servers, partitions=12)
        twilio = await wh.add_tenant(db)
        producer = kafka.producer(servers)
        await producer.start()
        try:
            await send(producer, register(twilio.tenant_id, twilio.account_sid, twilio.sender))
        finally:
            await producer.stop()
        decider = _decider(servers, server_url, tmp_path, tmp_path / "decider.log")
        sent: list[str] = []
        with wh.app_client(servers, database_url) as client:
            started, stopped_at, resumed = time.monotonic(), None, False
            spooled_at_resume = 0
            while time.monotonic() - started < OUTAGE_S + 15:
                elapsed = time.monotonic() - started
                if stopped_at is None and elapsed > 5:
                    os.kill(broker.process.pid, signal.SIGSTOP)
                    stopped_at = time.monotonic()
                if stopped_at and not resumed and time.monotonic() - stopped_at >= OUTAGE_S:
                    spooled_at_resume = await db.fetchval(wh.SPOOLED)
                    os.kill(broker.process.pid, signal.SIGCONT)
                    resumed = True
                sid = wh.sid()
                assert wh.post(client, twilio, wh.inbound(twilio, sid)).status_code == 200
                sent.append(sid)
                await asyncio.sleep(1 / RATE_PER_S)
            assert resumed
            deadline = time.monotonic() + 90
            events: list[EventEnvelope] = []
            while time.monotonic() < deadline:
                events = await _inbound_events(servers)
                if {e.payload["message_sid"] for e in events} >= set(sent):
                    break
                assert decider.poll() is None
                await asyncio.sleep(1)
    finally:
        os.kill(broker.process.pid, signal.SIGCONT)
        if decider is not None:
            decider.send_signal(signal.SIGTERM)
            decider.wait(timeout=30)
        broker.stop()
    per_sid = Counter(e.payload["message_sid"] for e in events)
    missing = set(sent) - set(per_sid)
    assert not missing, f"{len(missing)} of {len(sent)} webhooks never became events"
    assert set(per_sid.values()) == {1}, "a webhook was recorded twice"
    assert spooled_at_resume >= OUTAGE_S * RATE_PER_S * 0.5, "the outage did not hit the spool"
    assert await db.fetchval(wh.SPOOLED) == 0  # drained
