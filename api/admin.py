"""The platform admin's API over registered tenants: list, show, rename, senders, credentials,
suspend, reactivate (registering one: `api.admin_registration`).

Only the platform admin token passes (`PlatformAdmin`). Every change is a command on the log,
made durable like an operator's (`api.commanding`): input is checked first (400, nothing sent),
then the tenant (404), and the answer is 202 with the command id, or with `?wait=true` the
decider's outcome (200, 409 with the business reason, 202 if still pending at the timeout).
Twilio auth tokens are sealed for the tenant before they become a command; they are never
returned, logged, or put in an error. Queries read the tenant directory (no secret leaves it).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from api import commanding
from api.auth import PlatformAdmin
from api.container import Container
from api.errors import ApiError, ErrorBody
from api.operator import Accepted, IdempotencyKey, Wait, WaitSeconds
from commands import tenant as inputs
from commands.tenant import InvalidTenantInput
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
from projections.credentials import encrypt_secret
from projections.tenants import (
    TenantRecord,
    TenantSummary,
    get_tenant,
    tenant_summary,
    tenants_page,
)

router = APIRouter(prefix="/v1/admin/tenants", tags=["platform admin"])

UNAUTHORIZED: Final = {"model": ErrorBody, "description": "Not the platform admin token."}
INVALID: Final = {"model": ErrorBody, "description": "Malformed body or parameter; nothing sent."}
_UNKNOWN: Final = {"model": ErrorBody, "description": "No such tenant."}
_COMMAND: Final[dict[int | str, dict[str, Any]]] = {
    200: {"model": Accepted, "description": "Decided and accepted (`?wait=true`)."},
    400: INVALID,
    401: UNAUTHORIZED,
    404: _UNKNOWN,
    409: {"model": ErrorBody, "description": "Rejected by a business rule (`?wait=true`)."},
}


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


Limit = Annotated[int, Query(ge=1, le=read.MAX_LIMIT, description="Page size.")]


@router.get(
    "", summary="List tenants, oldest first",
    responses={400: INVALID, 401: UNAUTHORIZED},
)  # fmt: skip
async def list_tenants(
    request: Request, _: PlatformAdmin, limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> TenantPage:  # fmt: skip
    try:
        async with container_of(request).pool.acquire() as conn:
            page, next_cursor = await tenants_page(conn, limit, cursor)
    except read.BadCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return TenantPage(items=[_tenant(t) for t in page], next_cursor=next_cursor)


@router.get(
    "/{tenant_id}", summary="One tenant (never its token or key)",
    responses={401: UNAUTHORIZED, 404: _UNKNOWN},
)  # fmt: skip
async def show_tenant(request: Request, _: PlatformAdmin, tenant_id: str) -> Tenant:
    async with container_of(request).pool.acquire() as conn:
        found = await tenant_summary(conn, _tenant_id(tenant_id))
    if found is None:
        raise ApiError(404, "not_found", "no such tenant")
    return _tenant(found)


@router.patch("/{tenant_id}", status_code=202, summary="Rename", responses=_COMMAND)
async def rename(
    request: Request, _: PlatformAdmin, tenant_id: str, payload: RenameBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    name = checked(lambda: inputs.tenant_name(payload.name))
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
    sender = checked(lambda: inputs.sender(payload.sender))
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
    gone = checked(lambda: inputs.sender(sender))
    return await _change(
        request, tenant_id, idempotency_key, wait, wait_s,
        lambda _: RemoveWhatsAppSender(sender=gone), scope=gone,
    )  # fmt: skip


@router.put("/{tenant_id}/twilio-credentials", status_code=202,
            summary="Replace the Twilio credentials (the token is never returned)",
            responses=_COMMAND)  # fmt: skip
async def rotate_credentials(
    request: Request, _: PlatformAdmin, tenant_id: str, payload: CredentialsBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    sid = checked(lambda: inputs.account_sid(payload.twilio_account_sid))
    token = checked(lambda: inputs.auth_token(payload.twilio_auth_token.get_secret_value()))
    secret = container_of(request).config.secret_key
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
    why = checked(lambda: inputs.reason(payload.reason))
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
    container = container_of(request)
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


def checked[T](check: Callable[[], T]) -> T:
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


def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container
