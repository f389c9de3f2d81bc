"""`zapflow tenants list|show|update|add-sender|remove-sender|rotate-credentials|suspend|
reactivate`: the tenant directory, and changes to it through the log.

A change is a command on `zapflow.commands`, like `tenants create` and the admin API: the
decider alone judges it, so the CLI needs no rule of its own and every change is in the log
with its reason. The command then waits (bounded) until the directory reflects the change, or
until the decider's rejection is projected, whose reason it reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg

from commands.tenant_lifecycle import (
    AddWhatsAppSender,
    ReactivateTenant,
    RemoveWhatsAppSender,
    RotateTwilioCredentials,
    SuspendTenant,
    UpdateTenantSettings,
)
from events.envelope import CommandEnvelope
from events.registry import Message
from projections.read import ENTER_WITH_PUBLIC, command_result
from projections.tenants import TenantRecord, get_tenant, tenant_summary, tenants_page
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints
from zapflow.tenants import WAIT_S, directory_connection, send_command

PAGE: Final = 200

type Reflected = Callable[[TenantRecord], bool]


class ChangeNotMade(Exception):
    """Refused by the decider (with its reason), or not in the directory in time."""


async def list_tenants(endpoints: Endpoints, timeout_s: float) -> list[dict[str, Any]]:
    """Every tenant of the directory, oldest first (no token, no key hash)."""
    conn = await directory_connection(endpoints.database_url, timeout_s)
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    try:
        while True:
            page, cursor = await tenants_page(conn, PAGE, cursor)
            found += [_shown(asdict(t)) for t in page]
            if cursor is None:
                return found
    finally:
        await conn.close()


async def show_tenant(tenant_id: UUID, endpoints: Endpoints, timeout_s: float) -> dict[str, Any]:
    conn = await directory_connection(endpoints.database_url, timeout_s)
    try:
        return await _summary(conn, tenant_id)
    finally:
        await conn.close()


def reflected(body: Message) -> Reflected:
    """Whether the directory shows what `body` asks for."""
    match body:
        case UpdateTenantSettings(name=name):
            return lambda t: t.name == name
        case AddWhatsAppSender(sender=sender):
            return lambda t: sender in t.senders
        case RemoveWhatsAppSender(sender=sender):
            return lambda t: sender not in t.senders
        case RotateTwilioCredentials(twilio_account_sid=sid, twilio_auth_token_encrypted=sealed):
            # The ciphertext is this command's own (a fresh nonce): only it can match.
            return lambda t: (t.twilio_account_sid, t.twilio_auth_token_encrypted) == (sid, sealed)
        case SuspendTenant():
            return lambda t: t.suspended
        case ReactivateTenant():
            return lambda t: not t.suspended
    raise TypeError(f"{body.type} is not a tenant lifecycle command")


async def change(
    tenant_id: UUID,
    build: Callable[[TenantRecord], Message],
    endpoints: Endpoints,
    timeout_s: float,
    wait_s: float = WAIT_S,
) -> dict[str, Any]:
    """Send the command `build` makes for the tenant and wait until the directory shows it;
    returns the tenant as it is then, with the command id."""
    conn = await directory_connection(endpoints.database_url, timeout_s)
    try:
        record = await get_tenant(conn, tenant_id)
        if record is None:
            raise ConfigurationError("TENANT_ID", str(tenant_id), "no such tenant")
        body = build(record)
        command_id = uuid4()
        envelope = CommandEnvelope(
            command_id=command_id, tenant_id=tenant_id, type=body.type,
            schema_version=body.schema_version, issued_at=datetime.now(UTC),
            correlation_id=command_id, payload=body.payload(),
        )  # fmt: skip
        await send_command(endpoints.bootstrap_servers, envelope, timeout_s)
        done = reflected(body)
        # What is already so is decided as nothing (no result to wait for), except removing a
        # sender the tenant does not have, which the decider refuses.
        already = done(record) and not isinstance(body, RemoveWhatsAppSender)
        deadline = time.monotonic() + wait_s
        while True:
            result = await _result(conn, tenant_id, command_id)
            if result is not None and result["outcome"] == "rejected":
                raise ChangeNotMade(
                    f"refused by the decider: {result['reason_code']}: {result['reason']}"
                )
            record = await get_tenant(conn, tenant_id)
            if record is not None and done(record) and (already or result is not None):
                return {**await _summary(conn, tenant_id), "command_id": str(command_id)}
            if time.monotonic() > deadline:
                decided = "accepted by the decider" if result is not None else "sent"
                raise ChangeNotMade(
                    f"command {command_id} was {decided} but the directory does not show the "
                    f"change after {wait_s:.0f}s; are the decider and projector running "
                    "(`zapflow up`)?"
                )
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _result(conn: asyncpg.Connection, tenant_id: UUID, command_id: UUID) -> Any:
    async with conn.transaction(readonly=True):  # command_results: RLS, the active version
        await conn.execute(ENTER_WITH_PUBLIC, str(tenant_id))
        return await command_result(conn, tenant_id, command_id)


async def _summary(conn: asyncpg.Connection, tenant_id: UUID) -> dict[str, Any]:
    found = await tenant_summary(conn, tenant_id)
    if found is None:
        raise ConfigurationError("TENANT_ID", str(tenant_id), "no such tenant")
    return _shown(asdict(found))


def _shown(tenant: dict[str, Any]) -> dict[str, Any]:
    return tenant | {
        "tenant_id": str(tenant["tenant_id"]),
        "senders": list(tenant["senders"]),
        "registered_at": tenant["registered_at"].isoformat(),
    }
