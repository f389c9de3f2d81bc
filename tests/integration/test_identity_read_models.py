"""API keys and tenant suspension, from commands on the log to the read models (ADR 0018):
the real decider and projector, the query functions as the API's role under row-level
security. A key is listed without its hash, found by its hash until revoked, and never seen
from another tenant; a suspension and a reactivation show in the tenant directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import asyncpg
import pytest
from fastapi.testclient import TestClient

from commands.api_keys import CreateApiKey, RevokeApiKey
from commands.tenant_lifecycle import ReactivateTenant, SuspendTenant
from projections import read
from projections.api_keys import active_key, api_keys
from projections.database import APP_ROLE, create_pool, with_user
from projections.tenants import get_tenant
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_registration_saga import produce

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
