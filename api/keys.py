"""`/v1/api-keys`: the tenant's scoped API keys for integrations: list, create, revoke (admin).

The key is generated here, `zf_<tenant id, 32 hex>_<secret>` (the tenant in the key lets the
API look it up under that tenant's row-level security, `api.auth`), shown once in the creation's
answer and never again: the command, the log and the read models carry only its SHA-256.
Scopes are the permissions the key has (`read`, `operate`, `admin`); the decider refuses a
key with more than its creating user's role allows (`role_not_allowed`). A revoked key stops
authenticating within the API's auth cache time (`auth_cache_ttl_s`, 5 s by default).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from api import admin_commands as admin
from api.auth import Administrator
from api.container import Container
from api.errors import ApiError
from commands.api_keys import CreateApiKey, RevokeApiKey
from events.identity import Scope
from projections import read
from projections.api_keys import api_keys, key
from projections.database import Conn

router = APIRouter(prefix="/v1/api-keys", tags=["people and keys"])


def generate(tenant: uuid.UUID) -> str:
    """A new scoped key of `tenant` (the format `api.auth.SCOPED_KEY` recognises)."""
    return f"zf_{tenant.hex}_{secrets.token_urlsafe(32)}"


class ApiKeyOut(BaseModel):
    key_id: uuid.UUID
    name: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(
        description="Recorded at most once a minute per key and API process."
    )


class ApiKeys(BaseModel):
    items: list[ApiKeyOut]


class NewApiKey(BaseModel):
    name: str = Field(min_length=1, max_length=200, examples=["CRM integration"])
    scopes: list[Scope] = Field(min_length=1, max_length=3, examples=[["read"]])


class CreatedApiKey(BaseModel):
    key_id: uuid.UUID
    name: str
    scopes: list[Scope]
    key: str = Field(description="The key itself: shown in this answer only, never again.")
    command_id: uuid.UUID
    status: Literal["accepted", "pending"] = Field(
        description="`pending` (202): not decided within the timeout; the key works once it is."
    )


@router.get("", summary="The tenant's API keys (never the keys themselves)",
            responses=admin.responses())  # fmt: skip
async def list_keys(request: Request, principal: Administrator) -> ApiKeys:
    container: Container = request.app.state.container
    async with read.tenant_scope(container.reader, principal.tenant_id) as conn:
        found = await api_keys(conn, principal.tenant_id)
    return ApiKeys(items=[ApiKeyOut.model_validate(k, from_attributes=True) for k in found])


@router.post(
    "",
    status_code=201,
    summary="Create a scoped API key; the answer shows it once",
    responses=admin.responses(400, 202, 409, ok=CreatedApiKey),
)
async def create_key(
    request: Request,
    principal: Administrator,
    payload: NewApiKey,
    response: Response,
    wait_s: admin.Timeout = 10.0,
) -> CreatedApiKey:
    container: Container = request.app.state.container
    if principal.kind == "api_key" and not set(payload.scopes) <= principal.permissions:
        # The decider ranks a user's key by its creator's role (`by`); a key acts with `by`
        # none, so the API keeps it from minting a key wider than itself.
        raise ApiError(409, "role_not_allowed", "a key cannot make a key with scopes it lacks")
    tenant, key_id = principal.tenant_id, uuid.uuid4()
    secret = generate(tenant)
    command = admin.build(lambda: CreateApiKey(
        key_id=key_id, name=payload.name, scopes=payload.scopes, by=principal.acting_user,
        key_sha256=hashlib.sha256(secret.encode()).hexdigest(),
    ))  # fmt: skip

    async def listed(conn: Conn) -> bool:
        return await key(conn, tenant, key_id) is not None

    decision = await admin.issue(container, tenant, command, uuid.uuid4(), wait_s, response,
                                 shows=listed)  # fmt: skip
    if decision.status == "accepted":
        response.status_code = 201
    return CreatedApiKey(
        key_id=key_id, name=command.name, scopes=command.scopes, key=secret,
        command_id=decision.command_id, status=decision.status,
    )  # fmt: skip


@router.delete(
    "/{key_id}",
    summary="Revoke an API key for good",
    responses=admin.responses(400, 200, 202, 404, 409),
)
async def revoke_key(
    request: Request,
    principal: Administrator,
    key_id: str,
    response: Response,
    idempotency_key: admin.IdempotencyKey = None,
    wait_s: admin.Timeout = 10.0,
) -> admin.Decision:
    container: Container = request.app.state.container
    tenant = principal.tenant_id
    try:
        kid = uuid.UUID(key_id)
    except ValueError:
        raise ApiError(404, "not_found", "no such API key") from None
    async with read.tenant_scope(container.reader, tenant) as conn:
        if await key(conn, tenant, kid) is None:
            raise ApiError(404, "not_found", "no such API key")

    async def revoked(conn: Conn) -> bool:
        found = await key(conn, tenant, kid)
        return found is not None and found.revoked_at is not None

    command = RevokeApiKey(key_id=kid, by=principal.acting_user)
    return await admin.issue(
        container, tenant, command, admin.command_id(tenant, command.type, kid, idempotency_key),
        wait_s, response, shows=revoked, idempotency_key=idempotency_key,
    )  # fmt: skip
