"""Twilio, played for integration tests: a tenant in the directory, signed webhooks, read-back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
from aiokafka import TopicPartition
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from api.app import create_app
from api.container import ApiConfig
from api.tenant_cache import DEFAULT_TTL_S
from events.envelope import HEADER_TYPE, CommandEnvelope, decode_command, header
from projections.credentials import encrypt_secret
from projections.migrations import migrate
from streams import kafka
from streams.topics import COMMANDS

KEY = bytes(range(32))
PUBLIC = "http://testserver"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
CONTACT = "whatsapp:+5511987654321"
LIMIT = 4096
PARTITIONS = 12
WAIT_S = 20.0
SPOOLED = "SELECT count(*) FROM command_spool"


@dataclass(frozen=True)
class Tenant:
    tenant_id: uuid.UUID
    account_sid: str
    token: str
    sender: str

    def path(self, kind: str = "messages") -> str:
        return f"/v1/tenants/{self.tenant_id}/twilio/{kind}"


class Reply(Protocol):
    """The part of the test client's response these tests read."""

    @property
    def status_code(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    def json(self) -> Any: ...


async def add_tenant(db: asyncpg.Connection) -> Tenant:
    """Migrate, then write one tenant the way the directory projection does (its contract)."""
    await migrate(db)
    tenant = Tenant(
        uuid.uuid4(), "AC" + uuid.uuid4().hex, uuid.uuid4().hex, "whatsapp:+14155238886"
    )
    await db.execute(
        "INSERT INTO tenants (tenant_id, name, twilio_account_sid, twilio_auth_token_encrypted, "
        "api_key_sha256, registered_at, updated_seq) VALUES ($1, $2, $3, $4, $5, now(), 1)",
        tenant.tenant_id,
        "Clínica Sorriso",
        tenant.account_sid,
        encrypt_secret(KEY, tenant.token, tenant.tenant_id),
        uuid.uuid4().hex * 2,
    )
    await db.execute(
        "INSERT INTO tenant_senders (tenant_id, sender) VALUES ($1, $2)",
        tenant.tenant_id,
        tenant.sender,
    )
    return tenant


def app_client(
    brokers: str, database_url: str, *, tenant_ttl_s: float = DEFAULT_TTL_S
) -> TestClient:
    config = ApiConfig(
        database_url, brokers, PUBLIC, secret_key=KEY, max_body_bytes=LIMIT, produce_timeout_s=1.0,
        tenant_ttl_s=tenant_ttl_s,
        auth_cache_ttl_s=0.0,  # a revoked key or a disabled user is refused at once
    )  # fmt: skip
    return TestClient(create_app(config))


def sid() -> str:
    return "SM" + uuid.uuid4().hex


def inbound(tenant: Tenant, message_sid: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": message_sid,
        "AccountSid": tenant.account_sid,
        "From": CONTACT,
        "To": tenant.sender,
        "Body": "Quero marcar uma consulta",
        "NumMedia": "0",
        "ProfileName": "Ana",
        "WaId": "5511987654321",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
    } | extra


def post(
    client: TestClient, tenant: Tenant, params: dict[str, str], kind: str = "messages"
) -> Reply:
    """POST as Twilio does: form-encoded, signed with the tenant's token over the public URL."""
    path = tenant.path(kind)
    signature = RequestValidator(tenant.token).compute_signature(PUBLIC + path, params)
    return client.post(path, data=params, headers={"X-Twilio-Signature": signature})


async def eventually(check: Callable[[], Awaitable[bool]]) -> bool:
    for _ in range(int(WAIT_S / 0.1)):
        if await check():
            return True
        await asyncio.sleep(0.1)
    return await check()


async def commands_until(brokers: str, tenant: Tenant, last_sid: str) -> list[CommandEnvelope]:
    """Every command of `tenant` in the log, up to and including the one for `last_sid` (the
    Twilio message or status callback with that `MessageSid`)."""
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        partitions = [TopicPartition(COMMANDS, n) for n in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[CommandEnvelope] = []
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if record.key != str(tenant.tenant_id).encode():
                        continue
                    envelope = decode_command(record.value)
                    assert header(record.headers, HEADER_TYPE) == envelope.type
                    found.append(envelope)
                    if envelope.payload.get("message_sid") == last_sid:
                        return found
        raise AssertionError(f"no command for {last_sid} within {WAIT_S}s; saw {len(found)}")
    finally:
        await consumer.stop()
