"""Sessions of people: log in, refresh, accept an invitation, finish a password reset (ADR 0019).

These are the only `/v1` routes without a bearer credential: the e-mail and a password, or a
refresh token, or a token handed out once (invitation, reset) are the credential. Every
refusal of a credential is the same 401 (`invalid_credentials`) for an unknown e-mail, a wrong
password, a disabled user or a removed member, after the same password-hashing work, so the
answer does not tell which e-mails exist. The e-mail's tenant is found in the platform's
e-mail directory (one global owner per address, ADR 0018), read like any tenant's rows under
row-level security with the platform tenant set; the password hash is then read in that
tenant's scope. A token's role is never trusted later: each request reads the member's role
(`api.auth`).

Setting a password is a command (`ChangePassword` with the token's SHA-256): the decider checks
the token against the log, and the answer waits (bounded) for its outcome, then logs in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from api import commanding
from api.auth import Authenticator
from api.container import Container
from api.errors import ApiError, ErrorBody
from api.passwords import WeakPassword, hash_password, verify_password
from api.tokens import InvalidToken, issue, verify
from commands.users import ChangePassword
from events.identity import Role
from events.registration import PLATFORM_TENANT_ID
from projections import read
from projections.people import credentials, password_version
from projections.registrations import holder

log = logging.getLogger("zapflow.api.sessions")
router = APIRouter(prefix="/v1/auth", tags=["sessions"])

WAIT_S: Final = 10.0
_REFUSED: Final = "the e-mail, password or token is not valid"
_NOT_VALID: Final = "the e-mail or token is not valid, has expired or was used"

type EmailText = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=254, pattern=r"^[^@\s\x00]+@[^@\s\x00]+$"),
]
type Secret = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class Login(BaseModel):
    email: EmailText
    password: Secret


class Refresh(BaseModel):
    refresh_token: Secret


class SetPassword(BaseModel):
    email: EmailText
    token: Secret = Field(description="The token handed out once with the invitation or reset.")
    password: Secret = Field(description="The new password: 10 to 1024 characters.")


class Session(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the scheme's name
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str
    refresh_expires_in: int
    tenant_id: UUID
    user_id: UUID
    role: Role


class Pending(BaseModel):
    status: Literal["pending"] = "pending"
    detail: str


_REFUSALS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"model": ErrorBody, "description": "Malformed body."},
    401: {"model": ErrorBody, "description": "Not a valid credential (always the same answer)."},
}


@router.post("/login", summary="Log in with e-mail and password", responses=_REFUSALS)
async def login(request: Request, body: Login) -> Session:
    container: Container = request.app.state.container
    found = await _holder(container, body.email)
    stored: str | None = None
    if found is not None:
        async with read.tenant_scope(container.reader, found[0]) as conn:
            user = await credentials(conn, found[0], body.email)
        if user is not None and user.active and user.user_id == found[1]:
            stored = user.password_hash
    if not await verify_password(stored, body.password) or found is None:
        raise ApiError(401, "invalid_credentials", _REFUSED)
    return await _session(container, found[0], found[1])


@router.post("/refresh", summary="A new session for a valid refresh token", responses=_REFUSALS)
async def refresh(request: Request, body: Refresh) -> Session:
    container: Container = request.app.state.container
    try:
        claims = verify(container.authenticator.keys, body.refresh_token, "refresh")
    except InvalidToken as exc:
        log.info("refresh token refused: %s", exc)
        raise ApiError(401, "invalid_credentials", _REFUSED) from None
    return await _session(container, claims.tenant_id, claims.user_id, claims.password_version)


_SETTERS: Final[dict[int | str, dict[str, Any]]] = {
    **_REFUSALS,
    202: {"model": Pending, "description": "Recorded, not decided yet: log in shortly."},
    409: {
        "model": ErrorBody,
        "description": "`invalid_token`: an unknown e-mail, a wrong, "
        "expired or used token, a disabled user (one answer for all).",
    },
}


@router.post(
    "/invitations/accept",
    summary="Accept an invitation: set the first password, get a session",
    responses=_SETTERS,
)
async def accept_invitation(request: Request, body: SetPassword) -> Any:
    return await _set_password(request, body, "invitation")


@router.post(
    "/password-reset/confirm",
    summary="Finish a password reset: set a new password, get a session",
    responses=_SETTERS,
)
async def confirm_reset(request: Request, body: SetPassword) -> Any:
    return await _set_password(request, body, "reset")


async def _set_password(
    request: Request, body: SetPassword, through: Literal["invitation", "reset"]
) -> Any:
    container: Container = request.app.state.container
    try:
        password_hash = await hash_password(body.password)
    except WeakPassword as exc:
        raise ApiError(400, "weak_password", str(exc)) from None
    found = await _holder(container, body.email)
    if found is None:
        raise ApiError(409, "invalid_token", _NOT_VALID)
    tenant_id, user_id = found
    token = hashlib.sha256(body.token.encode()).hexdigest()
    command = ChangePassword(
        user_id=user_id,
        password_hash=password_hash,
        invitation_token_sha256=token if through == "invitation" else None,
        reset_token_sha256=token if through == "reset" else None,
    )
    command_id = await commanding.submit(container, tenant_id, command)
    try:
        outcome = await commanding.outcome(container, tenant_id, command_id, WAIT_S)
    except ApiError as refused:  # one answer for every reason: it must not tell who exists
        log.info("%s refused for tenant %s: %s", through, tenant_id, refused.code)
        raise ApiError(409, "invalid_token", _NOT_VALID) from None
    if outcome == "accepted":  # and once the read model has it: the session carries it
        outcome = await _shown(container, tenant_id, user_id, password_version(password_hash))
    if outcome == "pending":
        pending = Pending(detail="the new password is recorded but not decided yet")
        return JSONResponse(pending.model_dump(), status_code=202)
    return await _session(container, tenant_id, user_id)


async def _shown(
    container: Container, tenant_id: UUID, user_id: UUID, version: str
) -> Literal["accepted", "pending"]:
    for _ in range(int(WAIT_S / 0.1)):
        found = await container.authenticator.standing(tenant_id, user_id, fresh=True)
        if found is not None and found[1] == version:
            return "accepted"
        await asyncio.sleep(0.1)
    return "pending"


async def _holder(container: Container, email: str) -> tuple[UUID, UUID] | None:
    async with read.tenant_scope(container.reader, PLATFORM_TENANT_ID) as conn:
        return await holder(conn, email)


async def _session(
    container: Container, tenant_id: UUID, user_id: UUID, renewing: str | None = None
) -> Session:
    """Tokens for an active member (their role read now), else the uniform 401; `renewing`: the
    password version of the refresh token, which must still be the user's."""
    authenticator: Authenticator = container.authenticator
    found = await authenticator.standing(tenant_id, user_id, fresh=True)
    if found is None or (renewing is not None and renewing != found[1]):
        raise ApiError(401, "invalid_credentials", _REFUSED)
    role, version = found
    now: datetime = container.clock()
    keys = authenticator.keys
    access, _ = issue(keys, "access", user_id, tenant_id, now, version)
    renewal, _ = issue(keys, "refresh", user_id, tenant_id, now, version)
    log.info("session issued: tenant=%s user=%s role=%s", tenant_id, user_id, role)
    return Session(
        access_token=access,
        expires_in=keys.access_ttl_s,
        refresh_token=renewal,
        refresh_expires_in=keys.refresh_ttl_s,
        tenant_id=tenant_id,
        user_id=user_id,
        role=role,
    )
