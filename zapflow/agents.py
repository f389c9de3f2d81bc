"""`zapflow agents configure|show`: a tenant's agent settings, through the log and back.

`configure` validates a JSON file against the settings' model (a bad file is an error naming the
field, and nothing is sent), sends `ConfigureAgent` to the decider, and waits until the decision
is projected: the settings as stored, or the reason it was refused.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, Final
from uuid import UUID, uuid4

import orjson
from pydantic import ValidationError

from commands.agent_config import ConfigureAgent
from events.envelope import CommandEnvelope
from events.tenant import AgentSettings
from projections import agents
from projections.database import connect
from projections.read import ENTER_WITH_PUBLIC
from projections.tenants import get_tenant
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints
from zapflow.tenants import directory_connection, send_command

WAIT_S: Final = 30.0


class AgentNotConfigured(Exception):
    """Refused by the decider, or not projected in time: says which."""


def parse_settings(text: str, source: str) -> AgentSettings:
    """The settings in `text` (JSON), or a `ConfigurationError` naming the first bad field."""
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigurationError("--file", source, f"is not JSON ({exc})") from None
    try:
        return AgentSettings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(the document)"
        raise ConfigurationError("--file", source, f"{where}: {first['msg']}") from None


async def configure(
    tenant_id: UUID, settings: AgentSettings, endpoints: Endpoints, timeout_s: float,
    wait_s: float = WAIT_S,
) -> dict[str, Any]:  # fmt: skip
    """Send `ConfigureAgent` and wait for its outcome; returns the settings as projected."""
    command = ConfigureAgent(settings=settings)
    command_id = uuid4()
    envelope = CommandEnvelope(
        command_id=command_id, tenant_id=tenant_id, type=command.type,
        schema_version=command.schema_version, issued_at=datetime.now(UTC),
        correlation_id=command_id, payload=command.payload(),
    )  # fmt: skip
    conn = await directory_connection(endpoints.database_url, timeout_s)
    try:
        if await get_tenant(conn, tenant_id) is None:
            raise ConfigurationError("--tenant", str(tenant_id), "no such tenant")
        await send_command(endpoints.bootstrap_servers, envelope, timeout_s)
        deadline = time.monotonic() + wait_s
        while True:
            async with conn.transaction():
                # command_results: the active version (ADR 0012); agent_settings: public
                await conn.execute(ENTER_WITH_PUBLIC, str(tenant_id))
                result = await conn.fetchrow(
                    "SELECT outcome, reason_code, reason FROM command_results "
                    "WHERE tenant_id = $1 AND command_id = $2",
                    tenant_id, command_id,
                )  # fmt: skip
                stored = await agents.settings_of(conn, tenant_id)
            if result is not None and result["outcome"] == "rejected":
                raise AgentNotConfigured(f"refused: {result['reason_code']}: {result['reason']}")
            if result is not None and stored == settings:
                return {"tenant_id": str(tenant_id), "command_id": str(command_id),
                        "settings": stored.model_dump(mode="json")}  # fmt: skip
            if time.monotonic() > deadline:
                raise AgentNotConfigured(
                    f"sent as command {command_id} but not projected after {wait_s:.0f}s; are "
                    "the decider and projector running (`zapflow up`)?"
                )
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def show(tenant_id: UUID, endpoints: Endpoints, timeout_s: float) -> dict[str, Any]:
    """The tenant's settings as projected (`configured: false` and no settings if none)."""
    conn = await connect(endpoints.database_url, timeout_s)
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
            stored = await agents.settings_of(conn, tenant_id)
    finally:
        await conn.close()
    if stored is None:
        return {"tenant_id": str(tenant_id), "configured": False, "settings": None}
    return {"tenant_id": str(tenant_id), "configured": True,
            "settings": stored.model_dump(mode="json")}  # fmt: skip
