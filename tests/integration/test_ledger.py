"""The send ledger's transactions under row-level security, as a role it applies to (ADR 0015).

Each ledger statement runs in a transaction of its own whose `app.tenant_id` is set together
with BEGIN (one round trip), on connections the pool does not reset on release: the tenant must
still be set for exactly that transaction, and an error must leave the connection outside any
transaction, ready for the next tenant.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import cast

import asyncpg
import pytest

from projections.database import PROJECTOR_ROLE
from streams.ledger import Ledger, keep_session

pytestmark = pytest.mark.integration
A, B = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
AT = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TO, FROM = "whatsapp:+5511987650001", "whatsapp:+5511300000000"


async def _as_restricted(conn: asyncpg.Connection) -> None:
    await conn.execute(f"SET ROLE {PROJECTOR_ROLE}")  # no superuser: RLS applies


@pytest.fixture
async def ledger(migrated: asyncpg.Connection, database_url: str) -> AsyncIterator[Ledger]:
    await migrated.execute(f"GRANT SELECT, INSERT, UPDATE ON send_ledger TO {PROJECTOR_ROLE}")
    # One connection: every operation below reuses what the one before left behind.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, reset=keep_session,
                                     init=_as_restricted)  # fmt: skip
    try:
        yield Ledger(pool)
    finally:
        await pool.close()


async def _begin(ledger: Ledger, tenant: uuid.UUID, outbound: str) -> bool:
    return await ledger.begin(tenant, outbound, 0, recipient=TO, sender=FROM, body="oi",
                              content_sid=None, at=AT)  # fmt: skip


async def test_each_operation_sees_and_writes_its_own_tenant_only(ledger: Ledger) -> None:
    assert await _begin(ledger, A, "out-1")
    await ledger.finish(A, "out-1", 0, "sent", message_sid="SMa", at=AT)
    assert await _begin(ledger, B, "out-1")  # the same id is another row for another tenant
    assert (await ledger.parts(A, "out-1"))[0].message_sid == "SMa"
    assert (await ledger.parts(B, "out-1"))[0].state == "attempting"
    assert await ledger.known(A, ["SMa"]) == {"SMa"}
    assert await ledger.known(B, ["SMa"]) == set()
    await ledger.finish(B, "out-1", 0, "sent", message_sid="SMa", at=AT)
    assert (await ledger.parts(A, "out-1"))[0].state == "sent"
    assert (await ledger.parts(B, "out-1"))[0].message_sid == "SMa"


_INSERT = (
    "INSERT INTO send_ledger (tenant_id, outbound_id, part, recipient, sender, state, "
    "attempt_started_at) VALUES ($1, $2, 0, $3, $4, 'attempting', $5)"
)


async def _insert_as_a(ledger: Ledger, tenant: uuid.UUID, outbound: str, fail: bool) -> None:
    """A statement in tenant A's transaction (the ledger's own helper), then maybe a failure."""
    async with ledger._tenant(A) as conn:
        await conn.execute(_INSERT, tenant, outbound, TO, FROM, AT)
        if fail:
            raise RuntimeError("the caller failed after the statement")


async def test_a_failed_statement_rolls_back_and_leaves_the_connection_clean(
    ledger: Ledger,
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # B's row in A's transaction
        await _insert_as_a(ledger, B, "out-x", fail=False)
    with pytest.raises(RuntimeError):
        await _insert_as_a(ledger, A, "out-y", fail=True)
    assert await ledger.parts(A, "out-y") == {}  # rolled back with it
    assert await ledger.parts(B, "out-x") == {}
    async with ledger.pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
    await _insert_as_a(ledger, A, "out-z", fail=False)  # the next transaction works as ever
    assert (await ledger.parts(A, "out-z"))[0].state == "attempting"


class OneConnection:
    """Stands in for the pool with one connection handed out as it is: asyncpg's pool rolls
    back a transaction left open when a connection is released, which would hide a ledger
    that forgot to end its own."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[asyncpg.Connection]:
        yield self.conn


async def test_the_ledger_ends_its_own_transaction_when_the_caller_fails(
    migrated: asyncpg.Connection, database_url: str
) -> None:
    await migrated.execute(f"GRANT SELECT, INSERT, UPDATE ON send_ledger TO {PROJECTOR_ROLE}")
    conn = await asyncpg.connect(database_url)
    try:
        await _as_restricted(conn)
        ledger = Ledger(cast(asyncpg.Pool, OneConnection(conn)))
        with pytest.raises(RuntimeError):
            await _insert_as_a(ledger, A, "out-1", fail=True)
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_setting('app.tenant_id', true)") in (None, "")
        assert await _begin(ledger, A, "out-2")  # committed, and the next works as ever
        assert not conn.is_in_transaction()
        assert set(await ledger.parts(A, "out-2")) == {0}
        assert await ledger.parts(A, "out-1") == {}
    finally:
        await conn.close()
