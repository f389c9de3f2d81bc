"""Row-level security of the identity read models (ADR 0011, 0018), as the real roles.

The same checks as `test_rls.py` for the conversation read models: the API role with tenant A
set sees none of B's rows and nothing with no tenant set; neither it nor the projector writes a
row of another tenant; and each check is shown to catch a leak when its table is weakened.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from projections import identity
from projections.database import APP_ROLE, connect, with_user
from projections.migrations import migrate
from tests.integration.test_rls import AT, SET_TENANT, A, B, _visible

pytestmark = pytest.mark.integration

TABLES = identity.TABLES
SHA = "ab" * 32


def _row(table: str, tenant: uuid.UUID, n: int) -> tuple[str, tuple[object, ...]]:
    key = uuid.uuid5(tenant, f"{table}{n}")
    rows: dict[str, tuple[str, tuple[object, ...]]] = {
        "users": ("INSERT INTO users (tenant_id, user_id, email, active, registration_id, "
                  "created_at, updated_at) VALUES ($1, $2, $3, true, $2, $4, $4)",
                  (tenant, key, f"u{n}@{tenant.hex}.example", AT)),
        "memberships": ("INSERT INTO memberships (tenant_id, user_id, role, added_at) "
                        "VALUES ($1, $2, 'viewer', $3)", (tenant, key, AT)),
        "invitations": ("INSERT INTO invitations (tenant_id, invitation_id, user_id, "
                        "token_sha256, expires_at, issued_at) VALUES ($1, $2, $2, $3, $4, $4)",
                        (tenant, key, SHA, AT)),
        "api_keys": ("INSERT INTO api_keys (tenant_id, key_id, name, key_sha256, scopes, "
                     "created_at) VALUES ($1, $2, 'k', $3, '{read}', $4)",
                     (tenant, key, f"{n:064x}", AT)),
        "registrations": ("INSERT INTO registrations (tenant_id, registration_id, email, "
                          "user_id, updated_at) VALUES ($1, $2, $3, $2, $4)",
                          (tenant, key, f"r{n}@{tenant.hex}.example", AT)),
        "email_directory": ("INSERT INTO email_directory (tenant_id, registration_id, email, "
                            "claimant_tenant_id, user_id, held, reserved_at) "
                            "VALUES ($1, $2, $3, $1, $2, true, $4)",
                            (tenant, key, f"d{n}@{tenant.hex}.example", AT)),
    }  # fmt: skip
    return rows[table]


@pytest.fixture
async def owner(db: asyncpg.Connection) -> asyncpg.Connection:
    """The migrating (superuser) connection, with two rows of each tenant in every table."""
    await migrate(db)
    for table in TABLES:
        for tenant in (A, B):
            for n in range(2):
                sql, args = _row(table, tenant, n)
                await db.execute(sql, *args)
    return db


@pytest.fixture
async def app(owner: asyncpg.Connection, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(with_user(database_url, APP_ROLE))
    try:
        yield conn
    finally:
        await conn.close()


async def test_every_identity_table_is_forced_under_row_level_security(
    app: asyncpg.Connection,
) -> None:
    for table in TABLES:
        owner = await app.fetchval("SELECT tableowner FROM pg_tables WHERE tablename = $1", table)
        forced = await app.fetchval(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = $1::regclass",
            table,
        )
        assert owner != APP_ROLE
        assert forced is True, table


@pytest.mark.parametrize("table", TABLES)
async def test_a_tenant_sees_only_its_own_rows_and_nothing_without_a_tenant(
    app: asyncpg.Connection, table: str
) -> None:
    assert await _visible(app, table, A) == [str(A)] * 2
    assert await _visible(app, table, B) == [str(B)] * 2
    assert await _visible(app, table, None) == []


@pytest.mark.parametrize("table", TABLES)
async def test_nobody_writes_another_tenants_rows(
    owner: asyncpg.Connection, app: asyncpg.Connection, table: str
) -> None:
    sql, args = _row(table, B, 7)
    async with app.transaction():
        await app.execute(SET_TENANT, str(A))
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await app.execute(sql, *args)  # the API role only reads
    async with owner.transaction():
        await owner.execute("SET LOCAL ROLE zapflow_projector")
        await owner.execute(SET_TENANT, str(A))
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await owner.execute(sql, *args)
    async with owner.transaction():  # the projector writes its tenant's rows
        await owner.execute("SET LOCAL ROLE zapflow_projector")
        await owner.execute(SET_TENANT, str(B))
        await owner.execute(sql, *args)
        assert await owner.execute(f"DELETE FROM {table} WHERE tenant_id = $1", A) == "DELETE 0"  # noqa: S608


@pytest.mark.parametrize(
    "weakening",
    [
        "ALTER TABLE {t} DISABLE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON {t}; "
        "CREATE POLICY tenant_isolation ON {t} FOR ALL TO zapflow_app USING (true)",
        "ALTER ROLE zapflow_app BYPASSRLS",
    ],
)
@pytest.mark.parametrize("table", TABLES)
async def test_the_checks_catch_a_weakened_table(
    owner: asyncpg.Connection, database_url: str, table: str, weakening: str
) -> None:
    """The isolation check above is not vacuous: each weakening makes it see B's rows."""
    try:
        await owner.execute(weakening.format(t=table))
        reconnected = await connect(with_user(database_url, APP_ROLE))
        try:
            assert str(B) in await _visible(reconnected, table, A)
        finally:
            await reconnected.close()
    finally:
        await owner.execute("ALTER ROLE zapflow_app NOBYPASSRLS")
