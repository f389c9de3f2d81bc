"""The command spool on the real broker and PostgreSQL: broker down, outage, late broker, relay."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import asyncpg
import pytest

from api.broker import BrokerLink
from api.spool import CommandSpool
from api.twilio_form import command_envelope, inbound_message, parse_form
from events.envelope import decode_command, encode_command
from projections.database import create_pool
from tests.integration.twilio_driver import (
    PARTITIONS,
    SPOOLED,
    TWIML,
    Tenant,
    add_tenant,
    app_client,
    commands_until,
    eventually,
    inbound,
    post,
    sid,
)
from zapflow.devbroker import start_dev_broker
from zapflow.processes import free_port
from zapflow.setup import ensure_topics_on

pytestmark = pytest.mark.integration


@pytest.fixture
async def tenant(db: asyncpg.Connection) -> Tenant:
    return await add_tenant(db)


async def _count(db: asyncpg.Connection) -> int:
    count: int = await db.fetchval(SPOOLED)
    return count


async def test_with_the_broker_down_webhooks_are_spooled_then_relayed_in_order(
    fresh_broker: str, database_url: str, db: asyncpg.Connection, tenant: Tenant
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    sids = [sid() for _ in range(5)]
    with app_client(closed, database_url) as down:
        for message_sid in sids:
            response = post(down, tenant, inbound(tenant, message_sid))
            assert (response.status_code, response.text) == (200, TWIML)
        ready = down.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"].startswith("not connected")
    rows = await db.fetch("SELECT tenant_id, key, value FROM command_spool ORDER BY id")
    assert [decode_command(r["value"]).payload["message_sid"] for r in rows] == sids
    assert {(r["tenant_id"], bytes(r["key"])) for r in rows} == {
        (tenant.tenant_id, str(tenant.tenant_id).encode())
    }

    pool = await create_pool(database_url, max_size=2)
    link = BrokerLink(fresh_broker)
    try:
        assert await link.try_connect()
        spool = CommandSpool(pool, link, produce_timeout_s=1.0, idle_poll_s=0.05)
        await spool.recover()
        assert spool.spooling  # rows left behind: keep their order
        relay = asyncio.create_task(spool.relay())

        async def back_to_direct() -> bool:
            return not spool.spooling

        drained = await eventually(back_to_direct)
        relay.cancel()
        assert drained
        assert await _count(db) == 0
        after = inbound_message(parse_form(urlencode(inbound(tenant, sid())).encode()))
        last = command_envelope(tenant.tenant_id, after, datetime.now(UTC))
        assert await spool.submit(last) == "broker"
    finally:
        await link.close()
        await pool.close()
    commands = await commands_until(fresh_broker, tenant, after.message_sid)
    assert [c.payload["message_sid"] for c in commands] == [*sids, after.message_sid]
    assert encode_command(commands[0])[1] == bytes(rows[0]["value"])


async def test_a_broker_outage_after_start_is_bridged_by_the_spool(
    database_url: str, db: asyncpg.Connection, tenant: Tenant, tmp_path: Path
) -> None:
    """The broker stops answering mid-run (SIGSTOP: connections hang, its log is kept)."""
    dev = start_dev_broker(0, tmp_path / "tansu.log")
    try:
        await ensure_topics_on(dev.bootstrap_servers, partitions=PARTITIONS)
        with app_client(dev.bootstrap_servers, database_url) as client:
            before = sid()
            assert post(client, tenant, inbound(tenant, before)).status_code == 200
            os.kill(dev.process.pid, signal.SIGSTOP)
            try:
                during = [sid() for _ in range(3)]
                for message_sid in during:
                    assert post(client, tenant, inbound(tenant, message_sid)).status_code == 200
                assert await _count(db) == len(during)
            finally:
                os.kill(dev.process.pid, signal.SIGCONT)

            async def drained() -> bool:
                return await _count(db) == 0

            assert await eventually(drained)
            after = sid()
            assert post(client, tenant, inbound(tenant, after)).status_code == 200
            assert await _count(db) == 0  # sent directly, no longer spooled
        commands = await commands_until(dev.bootstrap_servers, tenant, after)
        seen = [c.payload["message_sid"] for c in commands]
        # The produce that timed out may land too, next to its spooled copy: the decider dedups.
        assert list(dict.fromkeys(seen)) == [before, *during, after], seen
    finally:
        dev.stop()


async def test_the_api_starts_without_a_broker_and_connects_when_it_appears(
    database_url: str, tenant: Tenant, tmp_path: Path
) -> None:
    port = free_port()
    with app_client(f"127.0.0.1:{port}", database_url) as client:
        assert client.get("/readyz").json()["checks"]["broker"].startswith("not connected")
        dev = start_dev_broker(port, tmp_path / "tansu.log")
        try:
            await ensure_topics_on(dev.bootstrap_servers, partitions=PARTITIONS)

            async def broker_ok() -> bool:
                return bool(client.get("/readyz").json()["checks"]["broker"] == "ok")

            assert await eventually(broker_ok)
            message_sid = sid()
            assert post(client, tenant, inbound(tenant, message_sid)).status_code == 200
            (command,) = await commands_until(dev.bootstrap_servers, tenant, message_sid)
            assert command.payload["message_sid"] == message_sid
        finally:
            dev.stop()
