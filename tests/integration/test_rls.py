"""Row-level security at the SQL level, as the roles the application really uses (ADR 0011).

Every read-model table: the API role with tenant A set sees none of B's rows, with no tenant set
sees nothing, and nobody can write a row of another tenant. Each check is shown to catch a leak
when the table's protection is weakened. All of it for the migrated version 1 and for a version
a rebuild creates.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from projections import conversations, versions
from projections.database import APP_ROLE, connect, with_user
from projections.migrations import migrate

pytestmark = pytest.mark.integration

TABLES = conversations.TABLES
A, B = uuid.UUID(int=0xA), uuid.UUID(int=0xB)
AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SET_TENANT = "SELECT set_config('app.tenant_id', $1, true)"


def _row(table: str, tenant: uuid.UUID, n: int) -> tuple[str, tuple[object, ...]]:
    cid = uuid.uuid5(tenant, f"c{n}")
    if table == "conversations":
        sql = (
            "INSERT INTO conversations (tenant_id, conversation_id, contact, sender, state, "
            "started_at, updated_at) VALUES ($1, $2, $3, 'whatsapp:+1', 'bot', $4, $4)"
        )
        return sql, (tenant, cid, f"whatsapp:+55{n}", AT)
    if table == "messages":
        sql = (
            "INSERT INTO messages (tenant_id, message_id, conversation_id, direction, author, "
            "body, created_at, tenant_seq) VALUES ($1, $2, $3, 'inbound', 'contact', 'oi', $4, $5)"
        )
        return sql, (tenant, f"SM{tenant.int}-{n}", cid, AT, n + 1)
    if table == "conversation_facts":
        sql = (
            "INSERT INTO conversation_facts (tenant_id, event_id, conversation_id, day, kind) "
            "VALUES ($1, $2, $3, $4, 'handoff')"
        )
        return sql, (tenant, uuid.uuid5(tenant, f"event{n}"), cid, AT.date())
    if table == "command_results":
        sql = (
            "INSERT INTO command_results (tenant_id, command_id, outcome, tenant_seq, "
            "recorded_at) VALUES ($1, $2, 'accepted', $3, $4)"
        )
        return sql, (tenant, uuid.uuid5(tenant, f"cmd{n}"), n + 1, AT)
    if table == "agent_turns":
        sql = (
            "INSERT INTO agent_turns (tenant_id, turn_id, conversation_id, trigger_message_id, "
            "agent, model, prompt_hash, tokens_in, tokens_out, latency_ms, created_at, "
            "tenant_seq) VALUES ($1, $2, $3, 'SM1', 'faq', 'faq', 'h', 0, 0, 1, $4, $5)"
        )
        return sql, (tenant, f"turn{n}", cid, AT, n + 1)
    sql = "INSERT INTO contacts (tenant_id, contact, updated_at) VALUES ($1, $2, $3)"
    return sql, (tenant, f"whatsapp:+55{n}", AT)


@pytest.fixture(params=["migrated", "rebuilt"])
async def schema(request: pytest.FixtureRequest, db: asyncpg.Connection) -> str:
    """Where the tables are: version 1 (the migrations') or a version a rebuild created from
    schemas/projections/conversations.sql, which must be protected just the same."""
    await migrate(db)
    if request.param == "migrated":
        return "public"
    return (await versions.begin(db, conversations.NAME)).schema


async def _connect_app(database_url: str, schema: str) -> asyncpg.Connection:
    conn = await connect(with_user(database_url, APP_ROLE))
    await conn.execute("SELECT set_config('search_path', $1, false)", schema)
    return conn


@pytest.fixture
async def owner(db: asyncpg.Connection, schema: str) -> asyncpg.Connection:
    """The migrating (superuser) connection, with two rows of each tenant in every table."""
    await db.execute("SELECT set_config('search_path', $1, false)", schema)
    for table in TABLES:
        for tenant in (A, B):
            for n in range(2):
                sql, args = _row(table, tenant, n)
                await db.execute(sql, *args)
    return db


@pytest.fixture
async def app(
    owner: asyncpg.Connection, database_url: str, schema: str
) -> AsyncIterator[asyncpg.Connection]:
    conn = await _connect_app(database_url, schema)
    try:
        yield conn
    finally:
        await conn.close()


async def _visible(conn: asyncpg.Connection, table: str, tenant: uuid.UUID | None) -> list[str]:
    """The tenant ids of every row of `table` the connection sees with `tenant` set."""
    async with conn.transaction():
        if tenant is not None:
            await conn.execute(SET_TENANT, str(tenant))
        rows = await conn.fetch(f"SELECT tenant_id FROM {table}")  # noqa: S608 - fixed names
    return sorted(str(r["tenant_id"]) for r in rows)


async def test_the_api_role_is_neither_owner_superuser_nor_bypassrls(
    app: asyncpg.Connection,
) -> None:
    me = await app.fetchrow(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
    )
    assert me is not None
    assert (me["rolsuper"], me["rolbypassrls"]) == (False, False)
    for table in TABLES:
        owner = await app.fetchval(
            "SELECT tableowner FROM pg_tables WHERE tablename = $1 AND schemaname = $2",
            table, await app.fetchval("SELECT current_schema()"),
        )  # fmt: skip
        forced = await app.fetchval(
            "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = $1::regclass",
            table,
        )
        assert owner != APP_ROLE
        assert forced is True


@pytest.mark.parametrize("table", TABLES)
async def test_a_tenant_sees_only_its_own_rows_and_nothing_without_a_tenant(
    app: asyncpg.Connection, table: str
) -> None:
    assert await _visible(app, table, A) == [str(A)] * 2
    assert await _visible(app, table, B) == [str(B)] * 2
    assert await _visible(app, table, None) == []
    # The setting is transaction-local: a pooled connection forgets it after commit.
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
    owner: asyncpg.Connection, database_url: str, schema: str, table: str, weakening: str
) -> None:
    """The isolation check above is not vacuous: each weakening makes it see B's rows."""
    try:
        await owner.execute(weakening.format(t=table))
        reconnected = await _connect_app(database_url, schema)
        try:
            assert str(B) in await _visible(reconnected, table, A)
        finally:
            await reconnected.close()
    finally:
        await owner.execute("ALTER ROLE zapflow_app NOBYPASSRLS")
