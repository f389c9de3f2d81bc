"""Connecting to PostgreSQL: pools (pooler-safe), fail-fast checks, the database itself."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

type Conn = asyncpg.Connection | PoolConnectionProxy
"""A connection, direct or borrowed from a pool."""


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


APP_ROLE = "zapflow_app"
"""The role the query API connects as: owns nothing, no superuser, no BYPASSRLS (ADR 0011)."""


def with_user(url: str, user: str) -> str:
    """`url` for another role on the same server and database (no password carried over)."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


async def connect(url: str, timeout_s: float = 10.0) -> asyncpg.Connection:
    # statement_cache_size=0 keeps us compatible with transaction-mode poolers (Supavisor).
    return await asyncpg.connect(url, timeout=timeout_s, statement_cache_size=0)


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, statement_cache_size=0
    )
    assert pool is not None
    return pool


async def ensure_database(server_url: str, database: str, timeout_s: float = 10.0) -> None:
    """Create `database` on the server of `server_url` unless it exists."""
    conn = await connect(server_url, timeout_s)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            quoted = '"' + database.replace('"', '""') + '"'
            await conn.execute(f"CREATE DATABASE {quoted}")
    finally:
        await conn.close()


async def probe(url: str, timeout_s: float) -> str | None:
    """None when a query succeeds within the timeout, else what went wrong, in one line."""
    try:
        conn = await asyncio.wait_for(connect(url, timeout_s), timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    return None


PROJECTOR_ROLE = "zapflow_projector"
"""The role projections write tenant rows as: owns nothing, subject to row-level security."""


async def write_as(conn: Conn, tenant_id: UUID | None) -> None:
    """For the rest of the transaction (or until called again), write as the projector role with
    `tenant_id` set, so row-level security checks every row; None: the connection's own role."""
    if tenant_id is None:
        await conn.execute("SELECT set_config('role', 'none', true)")
        return
    await conn.execute(
        "SELECT set_config('role', $1, true), set_config('app.tenant_id', $2, true)",
        PROJECTOR_ROLE, str(tenant_id),
    )  # fmt: skip
