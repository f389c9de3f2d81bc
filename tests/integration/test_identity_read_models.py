"""API keys and the tenant's lifecycle, from commands on the log to the read models (ADR 0018):
the real decider and projector, the query functions as the API's role under row-level
security. A key is listed without its hash, found by its hash until revoked, and never seen
from another tenant; a suspension and a reactivation, a new name, WhatsApp senders added and
removed and rotated Twilio credentials show in the tenant directory, and projecting the
tenant's events again (a replay, in any order) changes nothing there.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import asyncpg
import pytest
from fastapi.testclient import TestClient

from commands.api_keys import CreateApiKey, RevokeApiKey
from commands.tenant_lifecycle import (
    AddWhatsAppSender,
    ReactivateTenant,
    RemoveWhatsAppSender,
    RotateTwilioCredentials,
    SuspendTenant,
    UpdateTenantSettings,
)
from events.envelope import EventEnvelope
from projections import read, tenants
from projections.api_keys import active_key, api_keys
from projections.credentials import encrypt_secret
from projections.database import APP_ROLE, create_pool, with_user
from projections.tenants import TenantRecord, get_tenant
from streams import kafka
from streams.log import read_all
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_registration_saga import produce
from tests.integration.twilio_driver import KEY

pytestmark = pytest.mark.integration


def sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


async def _until_rows(db: asyncpg.Connection, sql: str, count: int) -> None:
    for _ in range(150):
        if await db.fetchval(sql) >= count:
            return
        await asyncio.sleep(0.2)


async def test_api_keys_are_listed_without_hashes_and_only_to_their_tenant(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    db: asyncpg.Connection,
) -> None:  # fmt: skip
    _, a, b = platform
    ta, tb = a.tenant.tenant_id, b.tenant.tenant_id
    kept, revoked, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await produce(
        fresh_broker,
        command_envelope(ta, CreateApiKey(key_id=kept, name="crm", key_sha256=sha("k1"),
                                          scopes=["read", "operate"])),
        command_envelope(ta, CreateApiKey(key_id=revoked, name="old", key_sha256=sha("k2"),
                                          scopes=["read"])),
        command_envelope(ta, RevokeApiKey(key_id=revoked)),
        command_envelope(tb, CreateApiKey(key_id=other, name="b's", key_sha256=sha("k3"),
                                          scopes=["admin"])),
    )  # fmt: skip
    await _until_rows(db, "SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL", 1)
    await _until_rows(db, "SELECT count(*) FROM api_keys", 3)
    reader = await create_pool(with_user(database_url, APP_ROLE), min_size=1, max_size=2)
    try:
        async with read.tenant_scope(reader, ta) as conn:
            listed = await api_keys(conn, ta)
            found = await active_key(conn, ta, sha("k1"))
            gone = await active_key(conn, ta, sha("k2"))
            foreign = await active_key(conn, ta, sha("k3"))
            asked_for_b = await api_keys(conn, tb)  # RLS: the key's tenant only
    finally:
        await reader.close()
    assert {(k.key_id, k.scopes, k.revoked_at is None) for k in listed} == {
        (kept, ("read", "operate"), True), (revoked, ("read",), False),
    }  # fmt: skip
    assert not any(hasattr(k, "key_sha256") for k in listed)
    assert found is not None
    assert found.key_id == kept
    assert (gone, foreign, asked_for_b) == (None, None, [])


async def test_a_suspension_and_a_reactivation_show_in_the_tenant_directory(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> None:
    _, a, b = platform
    ta = a.tenant.tenant_id

    async def suspended() -> tuple[bool, bool]:
        one, two = await get_tenant(db, ta), await get_tenant(db, b.tenant.tenant_id)
        assert one is not None
        assert two is not None
        return one.suspended, two.suspended

    assert await suspended() == (False, False)
    await produce(fresh_broker, command_envelope(ta, SuspendTenant(reason="unpaid invoice")))
    for _ in range(150):
        if await suspended() == (True, False):
            break
        await asyncio.sleep(0.2)
    assert await suspended() == (True, False)
    await produce(fresh_broker, command_envelope(ta, ReactivateTenant()))
    for _ in range(150):
        if await suspended() == (False, False):
            break
        await asyncio.sleep(0.2)
    assert await suspended() == (False, False)


async def _events_of(brokers: str, tenant_id: uuid.UUID) -> list[EventEnvelope]:
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        return [e async for _, e in read_all(consumer) if e.tenant_id == tenant_id]
    finally:
        await consumer.stop()


async def _directory_rows(db: asyncpg.Connection, tenant_id: uuid.UUID) -> tuple[object, ...]:
    """The tenant's directory rows as stored, `updated_seq` included."""
    row = await db.fetchrow("SELECT * FROM tenants WHERE tenant_id = $1", tenant_id)
    senders = await db.fetch(
        "SELECT sender FROM tenant_senders WHERE tenant_id = $1 ORDER BY sender", tenant_id
    )
    return (dict(row) if row is not None else None, [r["sender"] for r in senders])


async def test_each_lifecycle_event_shows_in_the_directory_and_a_replay_changes_nothing(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> None:
    """Every change is followed by one that a replayed older event would undo if the
    projection were not idempotent on its own: a second name, a removed sender, a second
    rotation, a reactivation."""
    _, a, b = platform
    ta, first_sender = a.tenant.tenant_id, a.tenant.sender
    second, third = "whatsapp:+5511900002222", "whatsapp:+5511900003333"
    account = "AC" + "b" * 32
    sealed = [encrypt_secret(KEY, f"token-{n}", ta) for n in (1, 2)]
    b_before = await get_tenant(db, b.tenant.tenant_id)
    await produce(
        fresh_broker,
        *(command_envelope(ta, body) for body in (
            UpdateTenantSettings(name="Clínica Nova"),
            AddWhatsAppSender(sender=second),
            RotateTwilioCredentials(twilio_account_sid="AC" + "a" * 32,
                                    twilio_auth_token_encrypted=sealed[0]),
            AddWhatsAppSender(sender=third),
            SuspendTenant(reason="unpaid invoice"),
            RemoveWhatsAppSender(sender=second),
            RotateTwilioCredentials(twilio_account_sid=account,
                                    twilio_auth_token_encrypted=sealed[1]),
            UpdateTenantSettings(name="Clínica Sorriso Nova"),
            ReactivateTenant(),
        )),
    )  # fmt: skip
    expected = TenantRecord(
        tenant_id=ta, name="Clínica Sorriso Nova", twilio_account_sid=account,
        twilio_auth_token_encrypted=sealed[1], senders=frozenset({first_sender, third}),
        api_key_sha256=sha(a.api_key), suspended=False,
    )  # fmt: skip
    for _ in range(150):
        if await get_tenant(db, ta) == expected:
            break
        await asyncio.sleep(0.2)
    assert await get_tenant(db, ta) == expected
    assert await get_tenant(db, b.tenant.tenant_id) == b_before  # another tenant: untouched

    events = await _events_of(fresh_broker, ta)
    lifecycle = [e.type for e in events if e.type != "TenantRegistered"]
    assert lifecycle == [
        "TenantSettingsUpdated", "WhatsAppSenderAdded", "TwilioCredentialsRotated",
        "WhatsAppSenderAdded", "TenantSuspended", "WhatsAppSenderRemoved",
        "TwilioCredentialsRotated", "TenantSettingsUpdated", "TenantReactivated",
    ]  # fmt: skip
    projected = await _directory_rows(db, ta)
    # A replay straight through `apply`, without the projector's sequence skip: in log order,
    # then backwards. The rows, `updated_seq` included, stay as they are.
    async with db.transaction():
        for envelope in [*events, *reversed(events)]:
            await tenants.apply(db, envelope)
    assert await _directory_rows(db, ta) == projected

    # Projected from nothing (the directory lost, its events projected again): the same rows.
    async with db.transaction():
        await db.execute("DELETE FROM tenants WHERE tenant_id = $1", ta)
        for envelope in events:
            await tenants.apply(db, envelope)
    assert await _directory_rows(db, ta) == projected
