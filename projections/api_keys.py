"""A tenant's API keys (`api_keys`), projected from `ApiKeyCreated` and `ApiKeyRevoked`.

Only the key's SHA-256 is stored, as in the log; the key itself was shown once and exists
nowhere here. Written as the `zapflow_projector` role with the event's tenant set (ADR 0011).
Listing never returns the hash; `active_key` looks a key up by it, for authentication.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg

from events.catalog import EVENT_REGISTRY
from events.envelope import EventEnvelope
from events.identity import ApiKeyCreated, ApiKeyRevoked
from projections.database import Conn, write_as

TABLES: Final = ("api_keys",)
TYPES: Final = frozenset({"ApiKeyCreated", "ApiKeyRevoked"})

_CREATE: Final = """
INSERT INTO api_keys (tenant_id, key_id, name, key_sha256, scopes, created_at)
VALUES ($1, $2, $3, $4, $5::text[], $6) ON CONFLICT (tenant_id, key_id) DO NOTHING
"""
_COLUMNS: Final = "k.key_id, k.name, k.scopes, k.created_at, k.revoked_at, u.last_used_at"
_FROM: Final = (
    "public.api_keys k LEFT JOIN public.api_key_usage u USING (tenant_id, key_id) "
    "WHERE k.tenant_id = $1 "
)
_TOUCH: Final = """
INSERT INTO public.api_key_usage (tenant_id, key_id, last_used_at) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, key_id) DO UPDATE SET last_used_at = EXCLUDED.last_used_at
WHERE api_key_usage.last_used_at < EXCLUDED.last_used_at
"""


async def apply(conn: Conn, envelope: EventEnvelope) -> None:
    """Project one event; only the API key events concern this module."""
    if envelope.type not in TYPES:
        return
    event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    tenant = envelope.tenant_id
    await write_as(conn, tenant)
    if isinstance(event, ApiKeyCreated):
        await conn.execute(_CREATE, tenant, event.key_id, event.name, event.key_sha256,
                           list(event.scopes), envelope.occurred_at)  # fmt: skip
    elif isinstance(event, ApiKeyRevoked):
        await conn.execute(
            "UPDATE api_keys SET revoked_at = $3 WHERE tenant_id = $1 AND key_id = $2 "
            "AND revoked_at IS NULL", tenant, event.key_id, envelope.occurred_at,
        )  # fmt: skip
    await write_as(conn, None)


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: UUID
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = None


async def api_keys(conn: Conn, tenant_id: UUID) -> list[ApiKey]:
    """The tenant's keys, newest first, without their hashes (a transaction with the tenant
    set: RLS)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM {_FROM}"  # noqa: S608 - constant
        "ORDER BY k.created_at DESC, k.key_id", tenant_id,
    )  # fmt: skip
    return [_key(row) for row in rows]


async def active_key(conn: Conn, tenant_id: UUID, key_sha256: str) -> ApiKey | None:
    """The tenant's unrevoked key with this hash, if any."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {_FROM}"  # noqa: S608 - constant
        "AND k.key_sha256 = $2 AND k.revoked_at IS NULL", tenant_id, key_sha256,
    )  # fmt: skip
    return None if row is None else _key(row)


async def key(conn: Conn, tenant_id: UUID, key_id: UUID) -> ApiKey | None:
    """One of the tenant's keys, revoked or not."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM {_FROM}AND k.key_id = $2",  # noqa: S608 - constant
        tenant_id,
        key_id,
    )
    return None if row is None else _key(row)


async def touch_key(conn: Conn, tenant_id: UUID, key_id: UUID, used_at: datetime) -> None:
    """Record a use of the key (a writable transaction with the tenant set: RLS)."""
    await conn.execute(_TOUCH, tenant_id, key_id, used_at)


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(row["key_id"], row["name"], tuple(row["scopes"]), row["created_at"],
                  row["revoked_at"], row["last_used_at"])  # fmt: skip
