"""`zapflow tenants create` on the real broker and PostgreSQL; the test plays the projector."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka import TopicPartition

from commands.catalog import COMMAND_REGISTRY
from commands.tenant import RegisterTenant
from events.envelope import CommandEnvelope, decode_command
from projections.credentials import api_key_sha256, decrypt_secret
from projections.migrations import migrate
from streams import kafka
from streams.topics import COMMANDS
from tests.integration.twilio_driver import KEY, PARTITIONS, WAIT_S
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints
from zapflow.tenants import TenantNotProjected, create_tenant, validated

pytestmark = pytest.mark.integration

ACCOUNT = "AC0123456789abcdef0123456789abcdef"


async def registrations(brokers: str) -> list[CommandEnvelope]:
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        partitions = [TopicPartition(COMMANDS, n) for n in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for _ in range(int(WAIT_S / 0.2)):
            batches = await consumer.getmany(timeout_ms=200)
            found = [decode_command(r.value) for rs in batches.values() for r in rs]
            if found:
                return found
        raise AssertionError("no RegisterTenant command")
    finally:
        await consumer.stop()


async def project(db: asyncpg.Connection, envelope: CommandEnvelope) -> None:
    """What the directory projection writes for the resulting TenantRegistered."""
    command = COMMAND_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    assert isinstance(command, RegisterTenant)
    await db.execute(
        "INSERT INTO tenants (tenant_id, name, twilio_account_sid, twilio_auth_token_encrypted, "
        "api_key_sha256, registered_at, updated_seq) VALUES ($1, $2, $3, $4, $5, now(), 1)",
        envelope.tenant_id,
        command.name,
        command.twilio_account_sid,
        command.twilio_auth_token_encrypted,
        command.api_key_sha256,
    )


async def test_create_sends_register_tenant_and_waits_for_the_directory(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> None:
    await migrate(db)
    tenant = validated("Clínica", ACCOUNT, "tok-123", ["whatsapp:+14155238886"])
    creating = asyncio.create_task(
        create_tenant(tenant, Endpoints(fresh_broker, database_url), KEY, wait_s=WAIT_S)
    )
    (envelope,) = await registrations(fresh_broker)
    assert not creating.done()  # still waiting for the projection
    await project(db, envelope)
    tenant_id, api_key = await asyncio.wait_for(creating, WAIT_S)
    assert envelope.tenant_id == tenant_id
    assert envelope.payload["api_key_sha256"] == api_key_sha256(api_key)
    sealed = envelope.payload["twilio_auth_token_encrypted"]
    assert decrypt_secret(KEY, sealed, tenant_id) == "tok-123"


async def test_create_says_so_when_nothing_projects_the_tenant(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> None:
    await migrate(db)
    tenant = validated("Clínica", ACCOUNT, "tok", ["whatsapp:+14155238886"])
    with pytest.raises(TenantNotProjected, match="are the decider and projector running"):
        await create_tenant(tenant, Endpoints(fresh_broker, database_url), KEY, wait_s=0.5)


async def test_create_refuses_an_unmigrated_database_before_sending(
    fresh_broker: str, database_url: str
) -> None:
    tenant = validated("Clínica", ACCOUNT, "tok", ["whatsapp:+14155238886"])
    with pytest.raises(ConfigurationError, match="no tenants table"):
        await create_tenant(tenant, Endpoints(fresh_broker, database_url), KEY)
