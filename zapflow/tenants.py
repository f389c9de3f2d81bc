"""`zapflow tenants create`: register a tenant through the log and wait until the directory has it.

The auth token is encrypted here, before it leaves the process, and is never printed or logged;
the API key is generated here and shown once, only its SHA-256 travels.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Final
from uuid import UUID, uuid4, uuid5

import asyncpg
from aiokafka.errors import KafkaError

from commands.tenant import InvalidTenantInput, NewTenant, RegisterTenant, new_tenant
from events.envelope import CommandEnvelope, encode_command
from projections.credentials import encrypt_secret, new_api_key
from projections.database import connect, redact
from projections.tenants import get_tenant
from streams import kafka
from streams.topics import COMMANDS
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints

WAIT_S: Final = 30.0
OPTIONS: Final = {
    "name": "--name",
    "twilio_account_sid": "--twilio-account-sid",
    "twilio_auth_token": "--twilio-auth-token",
    "senders": "--sender",
    "sender": "--sender",
    "reason": "--reason",
}


class TenantNotProjected(Exception):
    """The command was delivered but the tenant did not reach the directory in time."""


@contextmanager
def as_options() -> Iterator[None]:
    """Input errors as the CLI reports them: the option, its value (never a token), why."""
    try:
        yield
    except InvalidTenantInput as exc:
        raise ConfigurationError(
            OPTIONS.get(exc.field, exc.field), exc.shown, exc.problem
        ) from None


def validated(name: str, account_sid: str, auth_token: str, senders: Sequence[str]) -> NewTenant:
    """The request, or a `ConfigurationError` naming the first bad option (never the token)."""
    with as_options():
        return new_tenant(name, account_sid, auth_token, senders)


def register_command(
    tenant: NewTenant, tenant_id: UUID, api_key_sha256: str, secret_key: bytes, now: datetime
) -> CommandEnvelope:
    """The `RegisterTenant` envelope, with the token sealed for this tenant id."""
    command = RegisterTenant(
        name=tenant.name,
        twilio_account_sid=tenant.account_sid,
        twilio_auth_token_encrypted=encrypt_secret(secret_key, tenant.auth_token, tenant_id),
        senders=list(tenant.senders),
        api_key_sha256=api_key_sha256,
    )
    command_id = uuid5(tenant_id, command.type)
    return CommandEnvelope(
        command_id=command_id,
        tenant_id=tenant_id,
        type=command.type,
        schema_version=command.schema_version,
        issued_at=now,
        correlation_id=command_id,
        idempotency_key=f"{command.type}:{tenant_id}",
        payload=command.payload(),
    )


async def create_tenant(
    tenant: NewTenant,
    endpoints: Endpoints,
    secret_key: bytes,
    *,
    timeout_s: float = 10.0,
    wait_s: float = WAIT_S,
) -> tuple[UUID, str]:
    """Send `RegisterTenant`, wait until the directory shows it; returns (tenant id, API key)."""
    tenant_id = uuid4()
    api_key, api_key_sha256 = new_api_key()
    envelope = register_command(tenant, tenant_id, api_key_sha256, secret_key, datetime.now(UTC))
    conn = await directory_connection(endpoints.database_url, timeout_s)
    try:
        await send_command(endpoints.bootstrap_servers, envelope, timeout_s)
        deadline = time.monotonic() + wait_s
        while await get_tenant(conn, tenant_id) is None:
            if time.monotonic() > deadline:
                raise TenantNotProjected(
                    f"tenant {tenant_id} was sent to {COMMANDS} but is not in the directory "
                    f"after {wait_s:.0f}s; are the decider and projector running (`zapflow up`)?"
                )
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return tenant_id, api_key


async def directory_connection(database_url: str, timeout_s: float) -> asyncpg.Connection:
    try:
        conn = await connect(database_url, timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise ConfigurationError(
            "DATABASE_URL", redact(database_url), f"cannot connect ({exc})"
        ) from None
    if not await conn.fetchval("SELECT to_regclass('tenants') IS NOT NULL"):
        await conn.close()
        raise ConfigurationError(
            "DATABASE_URL", redact(database_url), "has no tenants table; run `zapflow setup`"
        )
    return conn


async def send_command(bootstrap_servers: str, envelope: CommandEnvelope, timeout_s: float) -> None:
    key, value, headers = encode_command(envelope)
    producer = kafka.producer(bootstrap_servers)
    try:
        await asyncio.wait_for(producer.start(), timeout_s)
        await asyncio.wait_for(
            producer.send_and_wait(COMMANDS, value, key=key, headers=headers), timeout_s
        )
    except (KafkaError, OSError, TimeoutError) as exc:
        problem = f"{type(exc).__name__}: {exc or 'no answer'}".splitlines()[0]
        raise ConfigurationError(
            "KAFKA_BOOTSTRAP_SERVERS",
            bootstrap_servers,
            f"cannot deliver to {COMMANDS} ({problem}); is the platform set up and running?",
        ) from None
    finally:
        await producer.stop()
