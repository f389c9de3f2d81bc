"""Commands from the API: made durable like a webhook's, then (optionally) waited on.

`submit` builds the envelope and hands it to the command spool (the broker, or PostgreSQL while
the broker is away): once it returns, the command will be decided. `outcome` polls the
`command_results` read model (under the tenant's row-level security) until the decider's answer
is projected: accepted, or a 409 with the business reason, or still pending at the deadline.
A command the decider finds already done records nothing, so it stays pending; callers that
can tell "already so" from the read models check that first.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Final, Literal

from api.container import Container
from api.errors import ApiError
from events.envelope import CommandEnvelope
from events.registry import Message
from projections import read

MAX_WAIT_S: Final = 30.0
_POLL_S: Final = 0.1

type Outcome = Literal["accepted", "pending"]


def has_nul(value: object) -> bool:
    """PostgreSQL cannot store NUL in text: such input is refused before it is a command."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


async def submit(
    container: Container,
    tenant_id: uuid.UUID,
    message: Message,
    *,
    command_id: uuid.UUID | None = None,
    correlation_id: uuid.UUID | None = None,
    idempotency_key: str | None = None,
) -> uuid.UUID:
    """Make `message` a durable command of `tenant_id`; returns its id."""
    payload = message.payload()
    if has_nul(payload):
        raise ApiError(400, "invalid_request", "text may not contain NUL characters")
    command_id = command_id or uuid.uuid4()
    envelope = CommandEnvelope(
        command_id=command_id,
        tenant_id=tenant_id,
        type=message.type,
        schema_version=message.schema_version,
        issued_at=container.clock(),
        correlation_id=correlation_id or command_id,
        idempotency_key=idempotency_key,
        payload=payload,
    )
    await container.spool.submit(envelope)
    return command_id


async def outcome(
    container: Container, tenant_id: uuid.UUID, command_id: uuid.UUID, wait_s: float
) -> Outcome:
    """`accepted` once projected, `pending` at the deadline; a rejection is an `ApiError` 409."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        async with read.tenant_scope(container.reader, tenant_id) as conn:
            result = await read.command_result(conn, tenant_id, command_id)
        if result is not None:
            if result["outcome"] == "rejected":
                raise ApiError(409, result["reason_code"], result["reason"])
            return "accepted"
        if loop.time() >= deadline:
            return "pending"
        await asyncio.sleep(_POLL_S)
