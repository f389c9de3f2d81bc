"""The tenant directory: `tenants` and `tenant_senders`, projected from `TenantRegistered` and the
tenant's lifecycle (name, WhatsApp senders, Twilio credentials, suspension: `events.tenant`).

`apply` is idempotent on its own, so it stays correct even without the runner's sequence skip:
the tenant's row remembers the `tenant_seq` of the last event that changed the tenant
(`updated_seq`), and every event first moves that mark forward, in the same statement that
changes the row; an older or repeated event moves nothing and changes nothing, sender rows
included (they are written only once the mark moved). The directory holds the Twilio auth token
only encrypted and the API key only as its SHA-256.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg

from events.catalog import EVENT_REGISTRY
from events.envelope import EventEnvelope
from events.tenant import (
    TenantReactivated,
    TenantRegistered,
    TenantSettingsUpdated,
    TenantSuspended,
    TwilioCredentialsRotated,
    WhatsAppSenderAdded,
    WhatsAppSenderRemoved,
)
from projections.batch import ModuleProjection
from projections.database import Conn
from projections.read import BadCursor, decode_cursor, encode_cursor

NAME: Final = "tenant_directory"
_DIRECTORY_EVENTS: Final = frozenset({
    "TenantRegistered", "TenantSettingsUpdated", "WhatsAppSenderAdded", "WhatsAppSenderRemoved",
    "TwilioCredentialsRotated", "TenantSuspended", "TenantReactivated",
})  # fmt: skip
"""Checked before decoding: the projector sees every event, and almost none is one of these."""

_UPSERT_TENANT: Final = """
INSERT INTO tenants (tenant_id, name, twilio_account_sid, twilio_auth_token_encrypted,
                     api_key_sha256, registered_at, updated_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (tenant_id) DO UPDATE SET
    name = EXCLUDED.name,
    twilio_account_sid = EXCLUDED.twilio_account_sid,
    twilio_auth_token_encrypted = EXCLUDED.twilio_auth_token_encrypted,
    api_key_sha256 = EXCLUDED.api_key_sha256,
    updated_seq = EXCLUDED.updated_seq
WHERE tenants.updated_seq < EXCLUDED.updated_seq
RETURNING tenant_id
"""

_SELECT_TENANT: Final = """
SELECT t.tenant_id, t.name, t.twilio_account_sid, t.twilio_auth_token_encrypted,
       t.api_key_sha256, t.suspended,
       ARRAY(SELECT s.sender FROM tenant_senders s WHERE s.tenant_id = t.tenant_id) AS senders
FROM tenants t
"""


@dataclass(frozen=True, slots=True)
class TenantRecord:
    """One tenant as the directory knows it."""

    tenant_id: UUID
    name: str
    twilio_account_sid: str
    twilio_auth_token_encrypted: str
    senders: frozenset[str]
    api_key_sha256: str
    suspended: bool = False


async def apply(conn: Conn, envelope: EventEnvelope) -> None:
    """Project one event; only the tenant's registration and lifecycle concern the directory."""
    if envelope.type not in _DIRECTORY_EVENTS:
        return
    event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    tenant_id, seq = envelope.tenant_id, envelope.tenant_seq
    match event:
        case TenantRegistered():
            await _register(conn, envelope, event)
        case TenantSettingsUpdated(name=name):
            await _advance(conn, tenant_id, seq, "name = $3", name)
        case TwilioCredentialsRotated():
            await _advance(conn, tenant_id, seq,
                           "twilio_account_sid = $3, twilio_auth_token_encrypted = $4",
                           event.twilio_account_sid, event.twilio_auth_token_encrypted)  # fmt: skip
        case TenantSuspended() | TenantReactivated():
            await _advance(
                conn, tenant_id, seq, "suspended = $3", isinstance(event, TenantSuspended)
            )
        case WhatsAppSenderAdded(sender=sender):
            if await _advance(conn, tenant_id, seq):
                await conn.execute(
                    "INSERT INTO tenant_senders (tenant_id, sender) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING", tenant_id, sender,
                )  # fmt: skip
        case WhatsAppSenderRemoved(sender=sender):
            if await _advance(conn, tenant_id, seq):
                await conn.execute(
                    "DELETE FROM tenant_senders WHERE tenant_id = $1 AND sender = $2",
                    tenant_id, sender,
                )  # fmt: skip
        case _:
            raise AssertionError(f"{envelope.type} is a directory event without a projection")


async def _advance(
    conn: Conn, tenant_id: UUID, seq: int, changes: str = "", *values: object
) -> bool:
    """Move the tenant's `updated_seq` to `seq` with `changes` (SET clauses over `$3`...), or,
    when the row already reflects this event or a later one, do nothing; True if it moved."""
    assignments = f"updated_seq = $2{', ' + changes if changes else ''}"
    # Not injectable: `changes` is one of this module's constants, the values are parameters.
    sql = f"UPDATE tenants SET {assignments} WHERE tenant_id = $1 AND updated_seq < $2"  # noqa: S608
    moved = await conn.fetchval(sql + " RETURNING true", tenant_id, seq, *values)
    return moved is not None


async def _register(conn: Conn, envelope: EventEnvelope, event: TenantRegistered) -> None:
    written = await conn.fetchval(
        _UPSERT_TENANT,
        envelope.tenant_id,
        event.name,
        event.twilio_account_sid,
        event.twilio_auth_token_encrypted,
        event.api_key_sha256,
        envelope.occurred_at,
        envelope.tenant_seq,
    )
    if written is None:  # the row already reflects this event or a later one
        return
    await _replace_senders(conn, envelope.tenant_id, event.senders)


async def _replace_senders(conn: Conn, tenant_id: UUID, senders: Sequence[str]) -> None:
    await conn.execute(
        "DELETE FROM tenant_senders WHERE tenant_id = $1 AND NOT (sender = ANY($2::text[]))",
        tenant_id,
        list(senders),
    )
    await conn.execute(
        "INSERT INTO tenant_senders (tenant_id, sender) SELECT $1, unnest($2::text[]) "
        "ON CONFLICT DO NOTHING",
        tenant_id,
        list(senders),
    )


async def get_tenant(conn: Conn, tenant_id: UUID) -> TenantRecord | None:
    row = await conn.fetchrow(_SELECT_TENANT + "WHERE t.tenant_id = $1", tenant_id)
    return None if row is None else _record(row)


async def tenant_by_api_key_hash(conn: Conn, sha256_hex: str) -> TenantRecord | None:
    """The tenant whose API key hashes to `sha256_hex` (lowercase hex), if any."""
    row = await conn.fetchrow(_SELECT_TENANT + "WHERE t.api_key_sha256 = $1", sha256_hex)
    return None if row is None else _record(row)


def _record(row: asyncpg.Record) -> TenantRecord:
    return TenantRecord(
        tenant_id=row["tenant_id"],
        name=row["name"],
        twilio_account_sid=row["twilio_account_sid"],
        twilio_auth_token_encrypted=row["twilio_auth_token_encrypted"],
        senders=frozenset(row["senders"]),
        api_key_sha256=row["api_key_sha256"],
        suspended=row["suspended"],
    )


PROJECTION: Final = ModuleProjection(NAME, apply)


# What the platform admin reads of the directory: never the token, never the key's hash.
_SELECT_SUMMARY: Final = """
SELECT t.tenant_id, t.name, t.twilio_account_sid, t.suspended, t.registered_at,
       ARRAY(SELECT s.sender FROM tenant_senders s WHERE s.tenant_id = t.tenant_id
             ORDER BY s.sender) AS senders
FROM tenants t
"""


@dataclass(frozen=True, slots=True)
class TenantSummary:
    """A tenant as the platform admin sees it: no secret, not even hashed."""

    tenant_id: UUID
    name: str
    twilio_account_sid: str
    senders: tuple[str, ...]
    suspended: bool
    registered_at: datetime


async def tenant_summary(conn: Conn, tenant_id: UUID) -> TenantSummary | None:
    row = await conn.fetchrow(_SELECT_SUMMARY + "WHERE t.tenant_id = $1", tenant_id)
    return None if row is None else _summary(row)


async def tenants_page(
    conn: Conn, limit: int, cursor: str | None
) -> tuple[list[TenantSummary], str | None]:
    """A page of the directory, oldest registration first; raises `read.BadCursor`."""
    if cursor is None:
        rows = await conn.fetch(
            _SELECT_SUMMARY + "ORDER BY t.registered_at, t.tenant_id LIMIT $1", limit + 1
        )
    else:
        at, tenant_id = decode_cursor(cursor, 2)
        try:
            after = (datetime.fromisoformat(at), UUID(tenant_id))
        except (TypeError, ValueError):
            raise BadCursor("the cursor is not one this API issued") from None
        if after[0].tzinfo is None:
            raise BadCursor("the cursor is not one this API issued")
        rows = await conn.fetch(
            _SELECT_SUMMARY + "WHERE (t.registered_at, t.tenant_id) > ($1, $2) "
            "ORDER BY t.registered_at, t.tenant_id LIMIT $3",
            *after, limit + 1,
        )  # fmt: skip
    page = [_summary(row) for row in rows[:limit]]
    if len(rows) <= limit:
        return page, None
    last = page[-1]
    return page, encode_cursor(last.registered_at.isoformat(), str(last.tenant_id))


def _summary(row: asyncpg.Record) -> TenantSummary:
    return TenantSummary(
        row["tenant_id"], row["name"], row["twilio_account_sid"], tuple(row["senders"]),
        row["suspended"], row["registered_at"],
    )  # fmt: skip
