"""Twilio's webhooks as a tenant's lifecycle changes, on the real broker, PostgreSQL, decider and
projector (ADR 0018).

A suspended tenant's incoming message is answered 423 once its signature is verified and
becomes no command; its status callbacks are still taken; a reactivation lets messages in again
without waiting for the cached directory row to lapse. After a rotation of the Twilio auth
token, the new token is taken as soon as the directory has it, and the old one is refused once
the webhook's cached row lapses (or was refreshed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Final

import asyncpg
import pytest
from fastapi.testclient import TestClient

from api.tenant_cache import DEFAULT_REFRESH_S, TenantCache
from commands.tenant_lifecycle import ReactivateTenant, RotateTwilioCredentials, SuspendTenant
from events.envelope import CommandEnvelope
from projections.credentials import encrypt_secret
from projections.database import create_pool
from projections.tenants import TenantRecord, get_tenant
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_registration_saga import produce
from tests.integration.twilio_driver import (
    CONTACT,
    KEY,
    Tenant,
    add_tenant,
    app_client,
    commands_until,
    inbound,
    post,
    sid,
)

pytestmark = pytest.mark.integration
PAST_REFRESH_S: Final = DEFAULT_REFRESH_S + 0.1
"""A refused request re-reads the directory only if the tenant was read longer ago than this."""


async def _until_directory(
    db: asyncpg.Connection, tenant_id: uuid.UUID, done: Callable[[TenantRecord], bool]
) -> None:
    for _ in range(150):
        found = await get_tenant(db, tenant_id)
        if found is not None and done(found):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the tenant directory did not show the change")


def _sids(commands: list[CommandEnvelope]) -> list[str]:
    """The Twilio messages and callbacks that became commands, in log order."""
    return [c.payload["message_sid"] for c in commands if "message_sid" in c.payload]


def _status(tenant: Tenant) -> dict[str, str]:
    return {
        "MessageSid": sid(), "AccountSid": tenant.account_sid, "From": tenant.sender,
        "To": CONTACT, "MessageStatus": "delivered", "ChannelPrefix": "whatsapp",
    }  # fmt: skip


async def test_a_suspended_tenants_message_is_423_and_no_command_until_it_is_reactivated(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> None:
    client, a, _ = platform  # the API's own cache lifetime (30 s): nothing waits for it
    t = a.tenant
    await produce(fresh_broker, command_envelope(t.tenant_id, SuspendTenant(reason="unpaid")))
    await _until_directory(db, t.tenant_id, lambda found: found.suspended)

    refused = inbound(t, sid())
    response = post(client, t, refused)
    assert response.status_code == 423, response.text
    assert response.json()["error"] == "tenant_suspended"
    assert "reactivated" in response.json()["detail"]
    # The signature is checked first: an unsigned or forged request learns nothing more.
    unsigned = inbound(t, sid())
    assert client.post(t.path(), data=unsigned).json()["error"] == "signature_missing"
    forged = inbound(t, sid())
    assert post(client, replace(t, token="not-the-token"), forged).status_code == 403
    # A report of a message that already went out is still taken.
    status = _status(t)
    assert post(client, t, status, "status").status_code == 200

    await produce(fresh_broker, command_envelope(t.tenant_id, ReactivateTenant()))
    await _until_directory(db, t.tenant_id, lambda found: not found.suspended)
    await asyncio.sleep(PAST_REFRESH_S)  # the cached row (suspended) is still well in its 30 s
    after = inbound(t, sid())
    response = post(client, t, after)
    assert response.status_code == 200, response.text

    commands = await commands_until(fresh_broker, t, after["MessageSid"])
    assert _sids(commands) == [status["MessageSid"], after["MessageSid"]]


async def test_a_rotated_token_is_taken_at_once_and_the_old_one_refused(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> None:
    """The cache (30 s) still holds the old token when the new one first signs a request: the
    refusal re-reads the directory, and from then on the old token is refused."""
    client, a, _ = platform
    old = a.tenant
    new = replace(old, token=uuid.uuid4().hex)
    first = inbound(old, sid())
    assert post(client, old, first).status_code == 200  # the old token is cached
    await _rotate(fresh_broker, db, new)
    await asyncio.sleep(PAST_REFRESH_S)

    signed_new = inbound(new, sid())
    assert post(client, new, signed_new).status_code == 200
    signed_old = inbound(old, sid())
    response = post(client, old, signed_old)
    assert (response.status_code, response.json()["error"]) == (403, "signature_invalid")
    last = inbound(new, sid())
    assert post(client, new, last).status_code == 200

    commands = await commands_until(fresh_broker, new, last["MessageSid"])
    assert _sids(commands) == [first["MessageSid"], signed_new["MessageSid"], last["MessageSid"]]


async def test_the_old_token_is_refused_once_the_cached_row_lapses(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    db: asyncpg.Connection,
) -> None:  # fmt: skip
    """Only the old token signs: nothing refreshes the cache, its lifetime alone retires it."""
    _, a, _ = platform
    ttl_s = 2.0
    old = a.tenant
    new = replace(old, token=uuid.uuid4().hex)
    with app_client(fresh_broker, database_url, tenant_ttl_s=ttl_s) as client:
        first = inbound(old, sid())
        assert post(client, old, first).status_code == 200  # the old token is cached
        await _rotate(fresh_broker, db, new)
        await asyncio.sleep(ttl_s)
        signed_old = inbound(old, sid())
        response = post(client, old, signed_old)
        assert (response.status_code, response.json()["error"]) == (403, "signature_invalid")
        signed_new = inbound(new, sid())
        assert post(client, new, signed_new).status_code == 200

    commands = await commands_until(fresh_broker, new, signed_new["MessageSid"])
    assert _sids(commands) == [first["MessageSid"], signed_new["MessageSid"]]


async def _rotate(brokers: str, db: asyncpg.Connection, new: Tenant) -> None:
    sealed = encrypt_secret(KEY, new.token, new.tenant_id)
    rotation = RotateTwilioCredentials(twilio_account_sid=new.account_sid,
                                       twilio_auth_token_encrypted=sealed)  # fmt: skip
    await produce(brokers, command_envelope(new.tenant_id, rotation))
    await _until_directory(db, new.tenant_id,
                           lambda found: found.twilio_auth_token_encrypted == sealed)  # fmt: skip


async def test_a_refusal_rereads_the_directory_at_most_once_per_refresh_interval(
    database_url: str, db: asyncpg.Connection
) -> None:
    """What bounds a flood of forged requests: one directory read per tenant per interval."""
    tenant = await add_tenant(db)
    now = [100.0]
    pool = await create_pool(database_url)
    try:
        cache = TenantCache(pool, KEY, ttl_s=30.0, refresh_s=1.0, monotonic=lambda: now[0])
        cached = await cache.get(tenant.tenant_id)
        assert cached is not None
        now[0] += 0.5
        assert await cache.refresh(cached) is None  # read 0.5 s ago: not again
        await db.execute("UPDATE tenants SET suspended = true WHERE tenant_id = $1",
                         tenant.tenant_id)  # fmt: skip
        assert await cache.refresh(cached) is None  # changed, but still within the interval
        now[0] += 0.6
        fresh = await cache.refresh(cached)
        assert fresh is not None
        assert fresh.record.suspended
        assert await cache.get(tenant.tenant_id) == fresh  # and it is what the cache holds now
        now[0] += 1.1
        assert await cache.refresh(fresh) is None  # read again: nothing changed
    finally:
        await pool.close()
