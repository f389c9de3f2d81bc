"""The platform admin's API over the tenant lifecycle: register, list, show, change, suspend.

Only the platform admin token passes (`PlatformAdmin`). Every change is a command on the log,
made durable like an operator's (`api.commanding`): input is checked first (400, nothing sent),
then the tenant (404), and the answer is 202 with the command id, or with `?wait=true` the
decider's outcome (200, 409 with the business reason, 202 if still pending at the timeout).
Twilio auth tokens are sealed for the tenant before they become a command; they are never
returned, logged, or put in an error. Queries read the tenant directory (no secret leaves it).

Registration with an `Idempotency-Key`: the tenant id comes from the key and the registration
key from the platform's secret key and that tenant id, so a retry of the same request is the
same command (the decider records it once) and answers the same tenant id and registration
key; the command id also covers the request itself, so the same key with another request is
refused by the decider (`tenant_exists`): 409 `idempotency_key_reused` (when waiting, the
default; without waiting, 202 and a key that will not work).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from api import commanding
from api.auth import PlatformAdmin
from api.container import Container
from api.errors import ApiError, ErrorBody
from api.operator import Accepted, IdempotencyKey, Wait, WaitSeconds
from api.tokens import derive
from commands import tenant as inputs
from commands.tenant import InvalidTenantInput, NewTenant, RegisterTenant
from commands.tenant_lifecycle import (
    AddWhatsAppSender,
    ReactivateTenant,
    RemoveWhatsAppSender,
    RotateTwilioCredentials,
    SuspendTenant,
    UpdateTenantSettings,
)
from events.registry import Message
from projections import read
from projections.credentials import api_key_sha256, encrypt_secret, new_api_key
from projections.tenants import (
    TenantRecord,
    TenantSummary,
    get_tenant,
    tenant_summary,
    tenants_page,
)

router = APIRouter(prefix="/v1/admin/tenants", tags=["platform admin"])

KEYS_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "zapflow:admin:idempotency-keys")
_POLL_S: Final = 0.1
_UNAUTHORIZED: Final = {"model": ErrorBody, "description": "Not the platform admin token."}
_INVALID: Final = {"model": ErrorBody, "description": "Malformed body or parameter; nothing sent."}
_UNKNOWN: Final = {"model": ErrorBody, "description": "No such tenant."}
_COMMAND: Final[dict[int | str, dict[str, Any]]] = {
    200: {"model": Accepted, "description": "Decided and accepted (`?wait=true`)."},
    400: _INVALID,
    401: _UNAUTHORIZED,
    404: _UNKNOWN,
    409: {"model": ErrorBody, "description": "Rejected by a business rule (`?wait=true`)."},
}


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


class Tenant(BaseModel):
    tenant_id: uuid.UUID
    name: str
    twilio_account_sid: str
    senders: list[str]
    suspended: bool
    registered_at: datetime


class TenantPage(BaseModel):
    items: list[Tenant]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class RenameBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=1000)


class SenderBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sender: str = Field(max_length=100, examples=["whatsapp:+14155238886"])


class CredentialsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    twilio_account_sid: str = Field(max_length=100)
    twilio_auth_token: SecretStr = Field(max_length=1000)


class SuspendBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(max_length=1000, examples=["unpaid invoice"])


@router.post(
    "",
    status_code=201,
    summary="Register a tenant; answers its registration key once",
    responses={
        201: {"model": Registered, "description": "Registered; the key works from now on."},
        202: {"model": Registered, "description": "Durable, not in the directory yet."},
        400: _INVALID,
        401: _UNAUTHORIZED,
        409: {"model": ErrorBody, "description": "The `Idempotency-Key` named another request."},
    },
)
async def register(
    request: Request, _: PlatformAdmin, payload: NewTenantBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = True, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    container = _container(request)
    tenant = _checked(
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
        api_key = registration_key(secret, tenant_id)
        key_sha256 = api_key_sha256(api_key)
        command_id = uuid.uuid5(tenant_id, f"RegisterTenant:{_fingerprint(secret, tenant)}")
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


def registration_key(secret_key: bytes, tenant_id: uuid.UUID) -> str:
    """The registration key of a tenant registered with an `Idempotency-Key`: derived, so a
    retry can answer it again though only its SHA-256 is stored anywhere."""
    raw = derive(secret_key, f"registration key {tenant_id}")
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


Limit = Annotated[int, Query(ge=1, le=read.MAX_LIMIT, description="Page size.")]


@router.get(
    "", summary="List tenants, oldest first",
    responses={400: _INVALID, 401: _UNAUTHORIZED},
)  # fmt: skip
async def list_tenants(
    request: Request, _: PlatformAdmin, limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> TenantPage:  # fmt: skip
    try:
        async with _container(request).pool.acquire() as conn:
            page, next_cursor = await tenants_page(conn, limit, cursor)
    except read.BadCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return TenantPage(items=[_tenant(t) for t in page], next_cursor=next_cursor)


@router.get(
    "/{tenant_id}", summary="One tenant (never its token or key)",
    responses={401: _UNAUTHORIZED, 404: _UNKNOWN},
)  # fmt: skip
async def show_tenant(request: Request, _: PlatformAdmin, tenant_id: str) -> Tenant:
    async with _container(request).pool.acquire() as conn:
        found = await tenant_summary(conn, _tenant_id(tenant_id))
    if found is None:
        raise ApiError(404, "not_found", "no such tenant")
    return _tenant(found)


@router.patch("/{tenant_id}", status_code=202, summary="Rename", responses=_COMMAND)
async def rename(
    request: Request, _: PlatformAdmin, tenant_id: str, payload: RenameBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    name = _checked(lambda: inputs.tenant_name(payload.name))
    return await _change(
        request, tenant_id, idempotency_key, wait, wait_s,
        lambda _: UpdateTenantSettings(name=name), already=lambda t: t.name == name,
    )  # fmt: skip


@router.post("/{tenant_id}/senders", status_code=202, summary="Add a WhatsApp sender",
             responses=_COMMAND)  # fmt: skip
async def add_sender(
    request: Request, _: PlatformAdmin, tenant_id: str, payload: SenderBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    sender = _checked(lambda: inputs.sender(payload.sender))
    return await _change(
        request, tenant_id, idempotency_key, wait, wait_s,
        lambda _: AddWhatsAppSender(sender=sender), scope=sender,
        already=lambda t: sender in t.senders,
    )  # fmt: skip


@router.delete("/{tenant_id}/senders/{sender}", status_code=202,
               summary="Remove a WhatsApp sender (never the last)",
               responses=_COMMAND)  # fmt: skip
async def remove_sender(
    request: Request, _: PlatformAdmin, tenant_id: str, sender: str,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    checked = _checked(lambda: inputs.sender(sender))
    return await _change(
        request, tenant_id, idempotency_key, wait, wait_s,
        lambda _: RemoveWhatsAppSender(sender=checked), scope=checked,
    )  # fmt: skip


@router.put("/{tenant_id}/twilio-credentials", status_code=202,
            summary="Replace the Twilio credentials (the token is never returned)",
            responses=_COMMAND)  # fmt: skip
async def rotate_credentials(
    request: Request, _: PlatformAdmin, tenant_id: str, payload: CredentialsBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    sid = _checked(lambda: inputs.account_sid(payload.twilio_account_sid))
    token = _checked(lambda: inputs.auth_token(payload.twilio_auth_token.get_secret_value()))
    secret = _container(request).config.secret_key
    return await _change(
        request, tenant_id, idempotency_key, wait, wait_s,
        lambda t: RotateTwilioCredentials(
            twilio_account_sid=sid,
            twilio_auth_token_encrypted=encrypt_secret(secret, token, t.tenant_id),
        ),
    )  # fmt: skip


@router.post("/{tenant_id}/suspend", status_code=202,
             summary="Suspend: no message in or out until reactivated",
             responses=_COMMAND)  # fmt: skip
async def suspend(
    request: Request, _: PlatformAdmin, tenant_id: str, payload: SuspendBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    why = _checked(lambda: inputs.reason(payload.reason))
    return await _change(
        request, tenant_id, idempotency_key, wait, wait_s,
        lambda _: SuspendTenant(reason=why), already=lambda t: t.suspended,
    )  # fmt: skip


@router.post("/{tenant_id}/reactivate", status_code=202, summary="Reactivate a suspended tenant",
             responses=_COMMAND)  # fmt: skip
async def reactivate(
    request: Request, _: PlatformAdmin, tenant_id: str,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    return await _change(
        request, tenant_id, idempotency_key, wait, wait_s,
        lambda _: ReactivateTenant(), already=lambda t: not t.suspended,
    )  # fmt: skip


async def _change(
    request: Request,
    raw_id: str,
    idempotency_key: str | None,
    wait: bool,
    wait_s: float,
    build: Callable[[TenantRecord], Message],
    *,
    scope: str = "",
    already: Callable[[TenantRecord], bool] | None = None,
) -> Any:
    """Submit the command `build` makes for the tenant; `already`: the directory shows it done
    (the decider then records nothing, so there is no outcome to wait for)."""
    container = _container(request)
    async with container.pool.acquire() as conn:
        record = await get_tenant(conn, _tenant_id(raw_id))
    if record is None:
        raise ApiError(404, "not_found", "no such tenant")
    body = build(record)
    if idempotency_key is None:
        command_id = uuid.uuid4()
    else:  # the same key on the same tenant, action (and sender) is the same command
        command_id = uuid.uuid5(record.tenant_id, f"admin:{body.type}:{scope}:{idempotency_key}")
    await commanding.submit(
        container, record.tenant_id, body, command_id=command_id, idempotency_key=idempotency_key
    )
    if not wait:
        return Accepted(command_id=command_id, status="pending")
    done = already is not None and already(record)
    if done or await commanding.outcome(container, record.tenant_id, command_id, wait_s) == (
        "accepted"
    ):
        accepted = Accepted(command_id=command_id, status="accepted")
        return JSONResponse(accepted.model_dump(mode="json"), status_code=200)
    return Accepted(command_id=command_id, status="pending")


def _checked[T](check: Callable[[], T]) -> T:
    try:
        return check()
    except InvalidTenantInput as exc:  # names the field, never echoes a token
        raise ApiError(400, "invalid_request", str(exc)) from None


def _tenant_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(404, "not_found", "no such tenant") from None


def _tenant(found: TenantSummary) -> Tenant:
    return Tenant(
        tenant_id=found.tenant_id, name=found.name, twilio_account_sid=found.twilio_account_sid,
        senders=list(found.senders), suspended=found.suspended, registered_at=found.registered_at,
    )  # fmt: skip


def _container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container
