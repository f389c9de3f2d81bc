"""`/v1/users`: the tenant's people (admin): list, invite, disable, enable, change role, remove,
and a password reset.

Every change is a command judged by the tenant's decider (ADR 0018): nobody grants or touches a
role above their own, the last owner stays, a suspended tenant grants nothing; refusals are a
409 with the reason code. The acting user is the caller (`by`); a key acts as the platform
would, within its scopes. Invitation and reset tokens are made here and shown once in the
answer; the log holds their SHA-256 only. Nothing e-mails them yet: the caller hands them on.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Final, Literal, cast

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from api import admin_commands as admin
from api import commanding
from api.auth import ROLE_PERMISSIONS, Administrator, Principal
from api.container import Container
from api.errors import ApiError
from commands.identity import RANK
from commands.memberships import ChangeRole, RemoveMembership
from commands.registration import StartRegistration, user_id_of
from commands.registration_saga import start
from commands.users import DisableUser, EnableUser, RequestPasswordReset
from events.identity import Email, Role
from events.registry import Message
from projections import read
from projections.database import Conn
from projections.people import member, members, user

router = APIRouter(prefix="/v1/users", tags=["people and keys"])

INVITATION_TTL: Final = timedelta(days=7)
RESET_TTL: Final = timedelta(days=1)


class MemberOut(BaseModel):
    user_id: uuid.UUID
    email: str
    role: Role
    active: bool = Field(description="False: disabled (cannot log in), still a member.")
    added_at: datetime


class Members(BaseModel):
    items: list[MemberOut]


class Invite(BaseModel):
    email: Email = Field(examples=["ana@example.com"])
    role: Role = Field(examples=["operator"])


class Invited(BaseModel):
    registration_id: uuid.UUID
    user_id: uuid.UUID
    invitation_token: str = Field(
        description="Shown in this answer only. Not e-mailed yet: hand it to the invitee, who "
        "accepts it with a password (`POST /v1/auth/invitations/accept`)."
    )
    invitation_expires_at: datetime
    command_id: uuid.UUID
    status: Literal["accepted", "pending"] = Field(
        description="Whether the registration's start was decided within the timeout; it then "
        "goes on by itself: follow `Location` (`GET /v1/registrations/{id}`)."
    )


class RoleBody(BaseModel):
    role: Role


class Reset(BaseModel):
    user_id: uuid.UUID
    reset_token: str = Field(
        description="Shown in this answer only. Not e-mailed yet: hand it to the user "
        "(`POST /v1/auth/password-reset/confirm`)."
    )
    expires_at: datetime
    command_id: uuid.UUID
    status: Literal["accepted", "pending"]


def _token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, hashlib.sha256(token.encode()).hexdigest()


@router.get("", summary="The tenant's members", responses=admin.responses())
async def list_members(request: Request, principal: Administrator) -> Members:
    container: Container = request.app.state.container
    async with read.tenant_scope(container.reader, principal.tenant_id) as conn:
        found = await members(conn, principal.tenant_id)
    return Members(items=[MemberOut.model_validate(m, from_attributes=True) for m in found])


@router.post(
    "",
    status_code=202,
    summary="Invite someone: a registration without a password; the invitation token once",
    responses=admin.responses(400, 409),
)
async def invite(
    request: Request,
    principal: Administrator,
    payload: Invite,
    response: Response,
    wait_s: admin.Timeout = 10.0,
) -> Invited:
    """The registration then runs by itself (e-mail claim, user, membership, invitation): follow
    `Location`. An address already taken fails it with `email_taken`, so a retried request makes
    no second user. The invitation token is not e-mailed (not built yet): hand it on."""
    container: Container = request.app.state.container
    _reach(principal, payload.role)
    tenant, rid = principal.tenant_id, uuid.uuid4()
    token, digest = _token()
    expires = container.clock() + INVITATION_TTL
    first = start(tenant, admin.build(lambda: StartRegistration(
        registration_id=rid, email=payload.email, role=payload.role,
        invitation_token_sha256=digest, invitation_expires_at=expires, by=principal.acting_user,
    )))  # fmt: skip
    await commanding.submit(
        container, tenant, first.command, command_id=first.command_id, correlation_id=rid
    )
    status = await admin.decided(container, tenant, first.command_id, wait_s)
    response.headers["Location"] = f"/v1/registrations/{rid}"
    return Invited(
        registration_id=rid, user_id=user_id_of(rid), invitation_token=token,
        invitation_expires_at=expires, command_id=first.command_id, status=status,
    )  # fmt: skip


_CHANGE: Final = admin.responses(400, 200, 202, 404, 409)


@router.post("/{user_id}/disable", summary="Disable a user (no more logins)", responses=_CHANGE)
async def disable(
    request: Request, principal: Administrator, user_id: str, response: Response,
    idempotency_key: admin.IdempotencyKey = None, wait_s: admin.Timeout = 10.0,
) -> admin.Decision:  # fmt: skip
    uid = await _known(request, principal, user_id)
    command = DisableUser(user_id=uid, by=principal.acting_user)
    return await _change(request, principal, command, uid, response, idempotency_key, wait_s,
                         _active_is(principal.tenant_id, uid, False))  # fmt: skip


@router.post("/{user_id}/enable", summary="Enable a disabled user", responses=_CHANGE)
async def enable(
    request: Request, principal: Administrator, user_id: str, response: Response,
    idempotency_key: admin.IdempotencyKey = None, wait_s: admin.Timeout = 10.0,
) -> admin.Decision:  # fmt: skip
    uid = await _known(request, principal, user_id)
    command = EnableUser(user_id=uid, by=principal.acting_user)
    return await _change(request, principal, command, uid, response, idempotency_key, wait_s,
                         _active_is(principal.tenant_id, uid, True))  # fmt: skip


def _active_is(tenant: uuid.UUID, uid: uuid.UUID, active: bool) -> admin.Shows:
    async def shows(conn: Conn) -> bool:
        found = await user(conn, tenant, uid)
        return found is not None and found.active == active

    return shows


@router.put("/{user_id}/role", summary="Change a member's role", responses=_CHANGE)
async def change_role(
    request: Request, principal: Administrator, user_id: str, payload: RoleBody,
    response: Response, idempotency_key: admin.IdempotencyKey = None,
    wait_s: admin.Timeout = 10.0,
) -> admin.Decision:  # fmt: skip
    _reach(principal, payload.role)
    uid = await _known(request, principal, user_id)

    async def changed(conn: Conn) -> bool:
        found = await member(conn, principal.tenant_id, uid)
        return found is not None and found.role == payload.role

    command = ChangeRole(user_id=uid, role=payload.role, by=principal.acting_user)
    kind = f"{command.type}:{payload.role}"  # another role with the same key is another command
    return await _change(request, principal, command, uid, response, idempotency_key, wait_s,
                         changed, kind)  # fmt: skip


@router.delete("/{user_id}", summary="Remove a member from the tenant", responses=_CHANGE)
async def remove(
    request: Request, principal: Administrator, user_id: str, response: Response,
    idempotency_key: admin.IdempotencyKey = None, wait_s: admin.Timeout = 10.0,
) -> admin.Decision:  # fmt: skip
    uid = await _known(request, principal, user_id)

    async def removed(conn: Conn) -> bool:
        return await member(conn, principal.tenant_id, uid) is None

    command = RemoveMembership(user_id=uid, by=principal.acting_user)
    return await _change(request, principal, command, uid, response, idempotency_key, wait_s,
                         removed)  # fmt: skip


@router.post(
    "/{user_id}/password-reset",
    summary="Start a password reset; the reset token once",
    responses=admin.responses(400, 200, 202, 404, 409, ok=Reset),
)
async def password_reset(
    request: Request, principal: Administrator, user_id: str, response: Response,
    wait_s: admin.Timeout = 10.0,
) -> Reset:  # fmt: skip
    """An admin may reset only a user whose role is not above their own (`role_not_allowed`):
    whoever holds the token can set the password."""
    container: Container = request.app.state.container
    uid = await _known(request, principal, user_id)  # a higher role: `role_not_allowed`
    token, digest = _token()
    expires = container.clock() + RESET_TTL
    command = RequestPasswordReset(user_id=uid, token_sha256=digest, expires_at=expires)
    decision = await admin.issue(container, principal.tenant_id, command, uuid.uuid4(), wait_s,
                                 response)  # fmt: skip
    return Reset(user_id=uid, reset_token=token, expires_at=expires,
                 command_id=decision.command_id, status=decision.status)  # fmt: skip


def _reach(principal: Principal, role: Role) -> None:
    """Nobody grants or touches a role above their own. The decider holds users to it (their
    `by`); a key acts with `by` none, as the platform would, so the API holds it here: a scoped
    key reaches as far as an admin, the tenant's registration key as far as an owner."""
    rank: Role = principal.role or ("owner" if principal.kind == "tenant_key" else "admin")
    if RANK[rank] < RANK[role]:
        raise ApiError(409, "role_not_allowed", f"a {rank} cannot grant or touch an {role}")
    if principal.kind == "api_key" and not ROLE_PERMISSIONS[role] <= principal.permissions:
        raise ApiError(409, "role_not_allowed", f"a key without all of {role}'s scopes")


async def _known(request: Request, principal: Principal, raw_id: str) -> uuid.UUID:
    """The user id if it names a user of the caller's tenant (else the same 404 for all) whose
    role is within the caller's reach (else 409 `role_not_allowed`)."""
    container: Container = request.app.state.container
    try:
        uid = uuid.UUID(raw_id)
    except ValueError:
        raise ApiError(404, "not_found", "no such user") from None
    async with read.tenant_scope(container.reader, principal.tenant_id) as conn:
        if await user(conn, principal.tenant_id, uid) is None:
            raise ApiError(404, "not_found", "no such user")
        target = await member(conn, principal.tenant_id, uid)
    if target is not None:
        _reach(principal, cast(Role, target.role))
    return uid


async def _change(
    request: Request,
    principal: Principal,
    command: Message,
    uid: uuid.UUID,
    response: Response,
    idempotency_key: str | None,
    wait_s: float,
    shows: admin.Shows,
    kind: str | None = None,
) -> admin.Decision:
    container: Container = request.app.state.container
    tenant = principal.tenant_id
    cid = admin.command_id(tenant, kind or command.type, uid, idempotency_key)
    return await admin.issue(container, tenant, command, cid, wait_s, response, shows=shows,
                             idempotency_key=idempotency_key)  # fmt: skip
