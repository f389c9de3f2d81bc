"""Operator commands on a conversation: hand off, return to the bot, close, reply as a human.

Each endpoint validates, makes the command durable exactly like a webhook does (the broker, or
the PostgreSQL spool when the broker is away) and answers 202 with the command id. The decider
judges it: an operator reply goes through the same send policy as the bot's. With an
`Idempotency-Key` the command id is derived from it, so a retried request is the same command
and is decided once. `?wait=true` waits (bounded) until the outcome is projected: 200 when
accepted, 409 with the business reason when rejected, 202 when still pending at the timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

from api import commanding
from api.auth import OperateTenant
from api.container import Container
from api.errors import ApiError, ErrorBody
from commands.operator import CloseConversation, HandOffToHuman, RequestOutboundMessage, ReturnToBot
from events.registry import Message
from projections import read

router = APIRouter(prefix="/v1/conversations/{conversation_id}", tags=["operator commands"])

MAX_WAIT_S: Final = commanding.MAX_WAIT_S


class Accepted(BaseModel):
    command_id: uuid.UUID
    status: Literal["pending", "accepted"] = Field(
        description="`pending`: durable, not decided (or not projected) yet."
    )


class HandoffBody(BaseModel):
    operator: str = Field("api", min_length=1, max_length=200, description="Who takes over.")
    reason: str = Field("", max_length=500)


class ReturnBody(BaseModel):
    operator: str = Field("api", min_length=1, max_length=200)


class CloseBody(BaseModel):
    closed_by: str = Field("api", min_length=1, max_length=200)
    reason: str = Field("", max_length=500)


class ReplyBody(BaseModel):
    body: str | None = Field(None, max_length=1600, examples=["Olá! Aqui é a Maria, da clínica."])
    content_sid: str | None = Field(
        None, description="An approved template (needed outside the 24-hour window)."
    )
    content_variables: dict[str, str] = Field(default_factory=dict)


_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"model": Accepted, "description": "Decided and accepted (`?wait=true`)."},
    400: {"model": ErrorBody, "description": "Malformed body or parameter."},
    401: {"model": ErrorBody, "description": "Missing, malformed or unknown API key."},
    404: {"model": ErrorBody, "description": "No such conversation for this tenant."},
    409: {"model": ErrorBody, "description": "Rejected by a business rule (`?wait=true`)."},
}

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200,
           description="Retries with the same key are one command."),
]  # fmt: skip
Wait = Annotated[bool, Query(description="Wait until the outcome is known.")]
WaitSeconds = Annotated[
    float, Query(alias="timeout", gt=0, le=MAX_WAIT_S, description="Seconds to wait at most.")
]


@router.post("/handoff", status_code=202, summary="Hand off to a human", responses=_RESPONSES)
async def handoff(
    request: Request, tenant: OperateTenant, conversation_id: str, payload: HandoffBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    return await _issue(
        request, tenant, conversation_id, idempotency_key, wait, wait_s,
        lambda cid: HandOffToHuman(conversation_id=cid, **payload.model_dump()),
    )  # fmt: skip


@router.post("/return-to-bot", status_code=202, summary="Give it back to the bot",
             responses=_RESPONSES)  # fmt: skip
async def return_to_bot(
    request: Request, tenant: OperateTenant, conversation_id: str, payload: ReturnBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    return await _issue(
        request, tenant, conversation_id, idempotency_key, wait, wait_s,
        lambda cid: ReturnToBot(conversation_id=cid, **payload.model_dump()),
    )  # fmt: skip


@router.post("/close", status_code=202, summary="Close the conversation", responses=_RESPONSES)
async def close(
    request: Request, tenant: OperateTenant, conversation_id: str, payload: CloseBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    return await _issue(
        request, tenant, conversation_id, idempotency_key, wait, wait_s,
        lambda cid: CloseConversation(conversation_id=cid, **payload.model_dump()),
    )  # fmt: skip


@router.post("/messages", status_code=202, summary="Reply as a human operator",
             responses=_RESPONSES)  # fmt: skip
async def reply(
    request: Request, tenant: OperateTenant, conversation_id: str, payload: ReplyBody,
    idempotency_key: IdempotencyKey = None, wait: Wait = False, wait_s: WaitSeconds = 10.0,
) -> Any:  # fmt: skip
    return await _issue(
        request, tenant, conversation_id, idempotency_key, wait, wait_s,
        lambda cid: RequestOutboundMessage(conversation_id=cid, author="human",
                                           **payload.model_dump()),
    )  # fmt: skip


async def _issue(
    request: Request,
    tenant: uuid.UUID,
    raw_id: str,
    idempotency_key: str | None,
    wait: bool,
    wait_s: float,
    build: Callable[[str], Message],
) -> Any:
    container: Container = request.app.state.container
    try:
        conversation_id = uuid.UUID(raw_id)
    except ValueError:
        raise ApiError(404, "not_found", "no such conversation") from None
    async with read.tenant_scope(container.reader, tenant) as conn:
        if await read.conversation(conn, tenant, conversation_id) is None:
            raise ApiError(404, "not_found", "no such conversation")
    try:
        body = build(str(conversation_id))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, "invalid_request", f"{where}: {first['msg']}".strip(": ")) from None
    if idempotency_key is None:
        command_id = uuid.uuid4()
    else:  # the same key on the same conversation and action is the same command
        command_id = uuid.uuid5(tenant, f"{body.type}:{conversation_id}:{idempotency_key}")
    await commanding.submit(
        container, tenant, body, command_id=command_id, idempotency_key=idempotency_key
    )
    if not wait:
        return Accepted(command_id=command_id, status="pending")
    return await _outcome(container, tenant, command_id, wait_s)


async def _outcome(
    container: Container, tenant: uuid.UUID, command_id: uuid.UUID, wait_s: float
) -> Any:
    if await commanding.outcome(container, tenant, command_id, wait_s) == "pending":
        return Accepted(command_id=command_id, status="pending")
    return JSONResponse(
        Accepted(command_id=command_id, status="accepted").model_dump(mode="json"),
        status_code=200,
    )
