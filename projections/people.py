"""A tenant's people: `users`, `memberships` and `invitations`, projected from identity events.

Written as the `zapflow_projector` role with the event's tenant set, so row-level security
checks every row (ADR 0011). The per-tenant sequence skip of the runner makes replays harmless;
each write also states the whole fact (active or not, removed or not), never a delta. No query
here returns a password hash or a token hash, except `credentials`, which login is for.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Final, cast
from uuid import UUID

import asyncpg

from events.catalog import EVENT_REGISTRY
from events.envelope import EventEnvelope
from events.identity import (
    InvitationIssued,
    InvitationRevoked,
    MembershipAdded,
    MembershipRemoved,
    MembershipRoleChanged,
    PasswordChanged,
    Role,
    UserCreated,
    UserDisabled,
    UserEnabled,
)
from projections.database import Conn, write_as

TABLES: Final = ("users", "memberships", "invitations")
TYPES: Final = frozenset({
    "UserCreated", "UserDisabled", "UserEnabled", "PasswordChanged", "MembershipAdded",
    "MembershipRemoved", "MembershipRoleChanged", "InvitationIssued", "InvitationRevoked",
})  # fmt: skip

_CREATE_USER: Final = """
INSERT INTO users (tenant_id, user_id, email, password_hash, active, registration_id, created_at,
                   updated_at)
VALUES ($1, $2, $3, $4, true, $5, $6, $6) ON CONFLICT (tenant_id, user_id) DO NOTHING
"""
_ADD_MEMBER: Final = """
INSERT INTO memberships (tenant_id, user_id, role, registration_id, added_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = EXCLUDED.role,
    registration_id = EXCLUDED.registration_id, added_at = EXCLUDED.added_at, removed_at = NULL
"""
_ISSUE: Final = """
INSERT INTO invitations (tenant_id, invitation_id, user_id, token_sha256, expires_at,
                         registration_id, issued_at)
VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id, invitation_id) DO NOTHING
"""
_MEMBERS: Final = """
SELECT u.user_id, u.email, m.role, u.active, m.added_at
FROM public.memberships m JOIN public.users u USING (tenant_id, user_id)
WHERE m.tenant_id = $1 AND m.removed_at IS NULL
"""


async def apply(conn: Conn, envelope: EventEnvelope) -> None:
    """Project one event; only users, memberships and invitations concern this module."""
    if envelope.type not in TYPES:
        return
    event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    tenant, at = envelope.tenant_id, envelope.occurred_at
    await write_as(conn, tenant)
    match event:
        case UserCreated():
            await conn.execute(_CREATE_USER, tenant, event.user_id, event.email,
                               event.password_hash, event.registration_id, at)  # fmt: skip
        case UserDisabled() | UserEnabled():
            await conn.execute(
                "UPDATE users SET active = $3, updated_at = $4 WHERE tenant_id = $1 "
                "AND user_id = $2", tenant, event.user_id, isinstance(event, UserEnabled), at,
            )  # fmt: skip
        case PasswordChanged():
            await conn.execute(
                "UPDATE users SET password_hash = $3, updated_at = $4 WHERE tenant_id = $1 "
                "AND user_id = $2", tenant, event.user_id, event.password_hash, at,
            )  # fmt: skip
        case MembershipAdded():
            await conn.execute(_ADD_MEMBER, tenant, event.user_id, event.role,
                               event.registration_id, at)  # fmt: skip
        case MembershipRemoved():
            await conn.execute(
                "UPDATE memberships SET removed_at = $3 WHERE tenant_id = $1 AND user_id = $2",
                tenant, event.user_id, at,
            )  # fmt: skip
        case MembershipRoleChanged():
            await conn.execute(
                "UPDATE memberships SET role = $3 WHERE tenant_id = $1 AND user_id = $2",
                tenant, event.user_id, event.role,
            )  # fmt: skip
        case InvitationIssued():
            await conn.execute(_ISSUE, tenant, event.invitation_id, event.user_id,
                               event.token_sha256, event.expires_at, event.registration_id,
                               at)  # fmt: skip
        case InvitationRevoked():
            await conn.execute(
                "UPDATE invitations SET revoked_at = $3 WHERE tenant_id = $1 "
                "AND invitation_id = $2 AND revoked_at IS NULL", tenant, event.invitation_id, at,
            )  # fmt: skip
        case _:
            pass  # PasswordResetRequested and the rest: nothing here
    await write_as(conn, None)


@dataclass(frozen=True, slots=True)
class User:
    user_id: UUID
    email: str
    active: bool
    registration_id: UUID
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Member:
    user_id: UUID
    email: str
    role: str
    active: bool
    added_at: datetime


@dataclass(frozen=True, slots=True)
class Credentials:
    """What login checks a password against: for login alone."""

    user_id: UUID
    password_hash: str | None
    active: bool


async def user(conn: Conn, tenant_id: UUID, user_id: UUID) -> User | None:
    """One user of the tenant, inside a transaction with the tenant set (RLS)."""
    row = await conn.fetchrow(
        "SELECT user_id, email, active, registration_id, created_at FROM public.users "
        "WHERE tenant_id = $1 AND user_id = $2", tenant_id, user_id,
    )  # fmt: skip
    return None if row is None else User(**dict(row))


async def standing(conn: Conn, tenant_id: UUID, user_id: UUID) -> tuple[Role, str] | None:
    """(role, password version) of an active user who is a member now, else None (RLS: the
    tenant set). The version is a short digest of the password hash: sessions carry it, so a
    password change ends every session made before it."""
    row = await conn.fetchrow(
        "SELECT m.role, u.password_hash FROM public.memberships m "
        "JOIN public.users u USING (tenant_id, user_id) "
        "WHERE m.tenant_id = $1 AND m.user_id = $2 AND m.removed_at IS NULL AND u.active",
        tenant_id, user_id,
    )  # fmt: skip
    if row is None:
        return None
    return cast(Role, row["role"]), password_version(row["password_hash"])


def password_version(password_hash: str | None) -> str:
    """ "" until a password is set; then 16 hex digits of the hash's SHA-256."""
    if password_hash is None:
        return ""
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


async def members(conn: Conn, tenant_id: UUID) -> list[Member]:
    """The tenant's members now, by e-mail, inside a transaction with the tenant set (RLS)."""
    return [
        Member(**dict(row)) for row in await conn.fetch(_MEMBERS + "ORDER BY u.email", tenant_id)
    ]


async def member(conn: Conn, tenant_id: UUID, user_id: UUID) -> Member | None:
    """One member of the tenant now, active or not, else None (RLS: the tenant set)."""
    row = await conn.fetchrow(_MEMBERS + "AND m.user_id = $2", tenant_id, user_id)
    return None if row is None else Member(**dict(row))


async def invitation_issued(conn: Conn, tenant_id: UUID, invitation_id: UUID) -> bool | None:
    """None: no such invitation; else whether it still stands (not revoked)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT revoked_at FROM public.invitations WHERE tenant_id = $1 AND invitation_id = $2",
        tenant_id, invitation_id,
    )  # fmt: skip
    return None if row is None else row["revoked_at"] is None


async def credentials(conn: Conn, tenant_id: UUID, email: str) -> Credentials | None:
    """The active user of the tenant with this e-mail, with the password hash (login only)."""
    row = await conn.fetchrow(
        "SELECT user_id, password_hash, active FROM public.users WHERE tenant_id = $1 "
        "AND email = lower(trim($2)) ORDER BY active DESC, created_at DESC LIMIT 1",
        tenant_id, email,
    )  # fmt: skip
    return None if row is None else Credentials(**dict(row))
