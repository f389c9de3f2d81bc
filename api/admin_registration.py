"""Registering a tenant as the platform admin: `POST /v1/admin/tenants`, idempotent by key.

The registration key is made here and answered once; only its SHA-256 travels, and the Twilio
auth token is sealed for the tenant before it becomes a command. The request waits (bounded)
until the decider accepted it and the directory has the tenant, so the key works when the
answer is 201; 202 when still undecided at the timeout (the key will work once decided).

With an `Idempotency-Key` the tenant id comes from the key, and the registration key from the
platform's secret key and that tenant id: a retry of the same request is the same command (the
decider records it once) and answers the same tenant id and key, though the key is stored
nowhere. The command id also covers the request itself (a keyed hash, since the token is part
of it), so the same key with another request is refused by the decider (`tenant_exists`) and
answers 409 `idempotency_key_reused` (when waiting, the default; without waiting, 202 and a key
that will not work).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
from typing import Any, Final, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from api import commanding
from api.admin import INVALID, UNAUTHORIZED, checked, container_of
from api.auth import PlatformAdmin
from api.container import Container
from api.errors import ApiError, ErrorBody
from api.operator import IdempotencyKey, Wait, WaitSeconds
from api.tokens import derive
from commands import tenant as inputs
from commands.tenant import NewTenant, RegisterTenant
from projections.credentials import api_key_sha256, encrypt_secret, new_api_key
from projections.tenants import get_tenant

router = APIRouter(prefix="/v1/admin/tenants", tags=["platform admin"])

KEYS_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "zapflow:admin:idempotency-keys")
_POLL_S: Final = 0.1


class NewTenantBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=1000, examples=["Clínica Sorriso"])
    twilio_account_sid: str = Field(max_length=100, examples=["AC" + "0" * 32])
    twilio_auth_token: SecretStr = Field(
        max_length=1000, description="Sealed before it is sent; never returned."
    )
    senders: list[str] = Field(max_length=100, examples=[["whatsapp:+14155238886"]])


class Registered(BaseModel):
    tenant_id: uuid.UUID
    api_key: str = Field(
        description="The tenant's registration key (every permission). Only its SHA-256 is "
        "stored: keep it now. A retry with the same `Idempotency-Key` answers it again."
    )
    command_id: uuid.UUID
    status: Literal["accepted", "pending"] = Field(
        description="`accepted`: in the directory, the key works; `pending`: not decided yet."
    )


@router.post(
    "",
    status_code=201,
    summary="Register a tenant; answers its registration key",
    responses={
        201: {"model": Registered, "description": "Registered; the key works from now on."},
        202: {"model": Registered, "description": "Durable, not in the directory yet."},
        400: INVALID,
        401: UNAUTHORIZED,
        409: {"model": ErrorBody, "description": "The `Idempotency-Key` named another request."},
    },
)
async def register(
    request: Request, _: PlatformAdmin, payload: NewTenantBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = True, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    container = container_of(request)
    tenant = checked(
        lambda: inputs.new_tenant(
            payload.name, payload.twilio_account_sid,
            payload.twilio_auth_token.get_secret_value(), payload.senders,
        )
    )  # fmt: skip
    secret = container.config.secret_key
    if idempotency_key is None:
        tenant_id = uuid.uuid4()
        api_key, key_sha256 = new_api_key()
        command_id = uuid.uuid5(tenant_id, RegisterTenant.model_fields["type"].default)
    else:
        tenant_id = uuid.uuid5(KEYS_NAMESPACE, idempotency_key)
        fingerprint = _fingerprint(secret, tenant)
        # The request is in the key's derivation: the same request answers the same key, and
        # another request under the same Idempotency-Key gets a key no tenant has (never the
        # existing tenant's, even in a 202 that does not wait for the refusal).
        api_key = registration_key(secret, tenant_id, fingerprint)
        key_sha256 = api_key_sha256(api_key)
        command_id = uuid.uuid5(tenant_id, f"RegisterTenant:{fingerprint}")
    command = RegisterTenant(
        name=tenant.name,
        twilio_account_sid=tenant.account_sid,
        twilio_auth_token_encrypted=encrypt_secret(secret, tenant.auth_token, tenant_id),
        senders=list(tenant.senders),
        api_key_sha256=key_sha256,
    )
    await commanding.submit(
        container, tenant_id, command, command_id=command_id, idempotency_key=idempotency_key
    )
    answer = Registered(tenant_id=tenant_id, api_key=api_key, command_id=command_id,
                        status="pending")  # fmt: skip
    if wait and await _registered(container, answer, key_sha256, wait_s, idempotency_key):
        return answer.model_copy(update={"status": "accepted"})
    return JSONResponse(answer.model_dump(mode="json"), status_code=202)


def registration_key(secret_key: bytes, tenant_id: uuid.UUID, fingerprint: str) -> str:
    """The registration key of a tenant registered with an `Idempotency-Key`: derived from the
    tenant and the request, so a retry of that request can answer it again though only its
    SHA-256 is stored anywhere."""
    raw = derive(secret_key, f"registration key {tenant_id} {fingerprint}")
    return "zf_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _fingerprint(secret_key: bytes, tenant: NewTenant) -> str:
    """Tells requests apart without revealing them (the token is in it: a keyed hash)."""
    body = orjson.dumps([tenant.name, tenant.account_sid, tenant.auth_token, tenant.senders])
    return hmac.new(derive(secret_key, "idempotent registration"), body, hashlib.sha256).hexdigest()


async def _registered(
    container: Container, answer: Registered, key_sha256: str, wait_s: float, key: str | None
) -> bool:
    """True once this command is accepted and the directory has the tenant with this key (a
    retry's command is the first one's: its result is there); 409 if the decider refused."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        try:
            decided = await commanding.outcome(container, answer.tenant_id, answer.command_id, 0)
        except ApiError as exc:
            if exc.code == "tenant_exists" and key is not None:
                raise ApiError(
                    409, "idempotency_key_reused",
                    "this Idempotency-Key registered a tenant with another request",
                ) from None  # fmt: skip
            raise
        if decided == "accepted":
            async with container.pool.acquire() as conn:
                record = await get_tenant(conn, answer.tenant_id)
            if record is not None and hmac.compare_digest(record.api_key_sha256, key_sha256):
                return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL_S)
