"""Where each registration is (`registrations`), and who holds each e-mail (`email_directory`).

The registration row folds what the saga folds (ADR 0018): its own events on the tenant's
partition, its user's, membership's and invitation's, and the directory's reservation on the
platform partition. Partitions are projected in any relative order, so the directory's
`EmailReserved` may create the row before `UserRegistrationStarted` fills it in. The directory's
rows belong to the platform tenant, like its stream; a release names no tenant, so the claimant
is read back from the platform's row. Every write runs as `zapflow_projector` with the owning
tenant set (ADR 0011).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final
from uuid import UUID

import asyncpg

from events.catalog import EVENT_REGISTRY
from events.envelope import EventEnvelope
from events.identity import (
    InvitationIssued,
    InvitationRevoked,
    MembershipAdded,
    MembershipRemoved,
    UserCreated,
    UserDisabled,
    UserEnabled,
)
from events.registration import (
    PLATFORM_TENANT_ID,
    EmailReservationReleased,
    EmailReserved,
    UserRegistrationCompensating,
    UserRegistrationCompleted,
    UserRegistrationFailed,
    UserRegistrationStarted,
)
from projections.database import Conn, write_as

TABLES: Final = ("registrations", "email_directory")
TYPES: Final = frozenset({
    "UserRegistrationStarted", "UserRegistrationCompensating", "UserRegistrationCompleted",
    "UserRegistrationFailed", "EmailReserved", "EmailReservationReleased", "UserCreated",
    "UserDisabled", "UserEnabled", "MembershipAdded", "MembershipRemoved", "InvitationIssued",
    "InvitationRevoked",
})  # fmt: skip

_START: Final = """
INSERT INTO registrations (tenant_id, registration_id, email, role, user_id, invitation_id,
                           started_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
ON CONFLICT (tenant_id, registration_id) DO UPDATE SET role = EXCLUDED.role,
    invitation_id = EXCLUDED.invitation_id, started_at = EXCLUDED.started_at
"""
_RESERVED: Final = """
INSERT INTO registrations (tenant_id, registration_id, email, user_id, reservation, updated_at)
VALUES ($1, $2, $3, $4, 'held', $5)
ON CONFLICT (tenant_id, registration_id) DO UPDATE SET reservation = 'held',
    updated_at = GREATEST(registrations.updated_at, EXCLUDED.updated_at)
"""
_CLAIM: Final = """
INSERT INTO email_directory (tenant_id, registration_id, email, claimant_tenant_id, user_id, held,
                             reserved_at)
VALUES ($1, $2, $3, $4, $5, true, $6) ON CONFLICT (tenant_id, registration_id) DO NOTHING
"""
_RELEASE: Final = """
UPDATE email_directory SET held = false, released_at = $3
WHERE tenant_id = $1 AND registration_id = $2 RETURNING claimant_tenant_id
"""
# Each sets one column of the saga's view; $1 tenant, $2 the key, $3 the value, $4 the time.
_SET: Final = "UPDATE registrations SET {column} = $3, updated_at = GREATEST(updated_at, $4) "


async def apply(conn: Conn, envelope: EventEnvelope) -> None:
    """Project one event; only the saga's events concern this module."""
    if envelope.type not in TYPES:
        return
    event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    tenant, at = envelope.tenant_id, envelope.occurred_at
    await write_as(conn, tenant)
    match event:
        case UserRegistrationStarted():
            await conn.execute(_START, tenant, event.registration_id, event.email, event.role,
                               event.user_id, event.invitation_id, at)  # fmt: skip
        case UserRegistrationCompensating():
            await conn.execute(
                "UPDATE registrations SET status = 'compensating', failed_step = $3, reason = $4, "
                "updated_at = $5 WHERE tenant_id = $1 AND registration_id = $2 "
                "AND status = 'started'",
                tenant, event.registration_id, event.failed_step, event.reason, at,
            )  # fmt: skip
        case UserRegistrationCompleted():
            await conn.execute(
                "UPDATE registrations SET status = 'completed', updated_at = $3, ended_at = $3 "
                "WHERE tenant_id = $1 AND registration_id = $2", tenant, event.registration_id, at,
            )  # fmt: skip
        case UserRegistrationFailed():
            await conn.execute(
                "UPDATE registrations SET status = 'failed', failed_step = $3, reason = $4, "
                "updated_at = $5, ended_at = $5 WHERE tenant_id = $1 AND registration_id = $2",
                tenant, event.registration_id, event.failed_step, event.reason, at,
            )  # fmt: skip
        case EmailReserved():
            await conn.execute(_CLAIM, tenant, event.registration_id, event.email,
                               event.tenant_id, event.user_id, at)  # fmt: skip
            await write_as(conn, event.tenant_id)
            await conn.execute(_RESERVED, event.tenant_id, event.registration_id, event.email,
                               event.user_id, at)  # fmt: skip
        case EmailReservationReleased():
            claimant = await conn.fetchval(_RELEASE, tenant, event.registration_id, at)
            if claimant is not None:  # else it never held the address: nothing to release
                await write_as(conn, claimant)
                await conn.execute(_SET.format(column="reservation") + "WHERE tenant_id = $1 "
                                   "AND registration_id = $2", claimant, event.registration_id,
                                   "released", at)  # fmt: skip
        case UserCreated() | UserEnabled() | UserDisabled():
            state = "disabled" if isinstance(event, UserDisabled) else "active"
            await conn.execute(_SET.format(column="user_state") + "WHERE tenant_id = $1 "
                               "AND user_id = $2", tenant, event.user_id, state, at)  # fmt: skip
        case MembershipAdded() | MembershipRemoved():
            added = isinstance(event, MembershipAdded)
            await conn.execute(_SET.format(column="membership") + "WHERE tenant_id = $1 "
                               "AND user_id = $2", tenant, event.user_id, added, at)  # fmt: skip
        case InvitationIssued() | InvitationRevoked():
            state = "issued" if isinstance(event, InvitationIssued) else "revoked"
            await conn.execute(_SET.format(column="invitation") + "WHERE tenant_id = $1 "
                               "AND invitation_id = $2", tenant, event.invitation_id, state,
                               at)  # fmt: skip
        case _:
            pass
    await write_as(conn, None)


@dataclass(frozen=True, slots=True)
class Registration:
    registration_id: UUID
    email: str
    role: str | None
    user_id: UUID
    status: str
    step: str | None
    """What it is doing: the forward step, or the undoing, it waits for; the failed step once
    failed; None once completed."""
    failed_step: str | None
    reason: str | None
    started_at: datetime | None
    updated_at: datetime
    ended_at: datetime | None


async def registration(conn: Conn, tenant_id: UUID, registration_id: UUID) -> Registration | None:
    """One registration of the tenant, inside a transaction with the tenant set (RLS)."""
    row = await conn.fetchrow(
        "SELECT * FROM public.registrations WHERE tenant_id = $1 AND registration_id = $2",
        tenant_id, registration_id,
    )  # fmt: skip
    if row is None:
        return None
    return Registration(
        registration_id=row["registration_id"], email=row["email"], role=row["role"],
        user_id=row["user_id"], status=row["status"], step=step(row),
        failed_step=row["failed_step"], reason=row["reason"], started_at=row["started_at"],
        updated_at=row["updated_at"], ended_at=row["ended_at"],
    )  # fmt: skip


def step(row: asyncpg.Record | dict[str, object]) -> str | None:
    """The step in progress, named as the saga names its commands (ADR 0018)."""
    status = row["status"]
    if status == "completed":
        return None
    if status == "failed":
        return str(row["failed_step"])
    if status == "compensating":
        undo = [("invitation", "issued", "revoke_invitation"), ("membership", True,
                "remove_membership"), ("user_state", "active", "disable_user"),
                ("reservation", "held", "release_email")]  # fmt: skip
        return next((name for column, value, name in undo if row[column] == value), "fail")
    forward = [("reservation", "none", "reserve_email"), ("user_state", "none", "create_user"),
               ("membership", False, "add_membership"), ("invitation", "none",
               "issue_invitation")]  # fmt: skip
    return next((name for column, value, name in forward if row[column] == value), "complete")


async def holder(conn: Conn, email: str) -> tuple[UUID, UUID] | None:
    """(tenant, user) holding `email` now, read from the platform's directory: call it inside
    `tenant_scope(pool, PLATFORM_TENANT_ID)`, the only tenant whose rows these are (RLS)."""
    row = await conn.fetchrow(
        "SELECT claimant_tenant_id, user_id FROM public.email_directory "
        "WHERE tenant_id = $1 AND email = lower(trim($2)) AND held",
        PLATFORM_TENANT_ID, email,
    )  # fmt: skip
    return None if row is None else (row["claimant_tenant_id"], row["user_id"])
