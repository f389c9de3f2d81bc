"""The query API over the conversation read models (Bearer API key → tenant; ADR 0011).

Every query runs in `projections.read.tenant_scope`: as the `zapflow_app` role, with the tenant
set for that transaction only, so row-level security backs up every `WHERE tenant_id`. Another
tenant's conversation answers 404 exactly like one that does not exist.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from api.auth import ReadTenant
from api.container import Container
from api.errors import ApiError, ErrorBody
from projections import read

router = APIRouter(prefix="/v1", tags=["conversations"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A malformed parameter or cursor."},
    401: {"model": ErrorBody, "description": "Missing, malformed or unknown API key."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such conversation for this tenant."}
}

type State = Literal["bot", "handoff_requested", "human", "closed"]


class Conversation(BaseModel):
    conversation_id: UUID
    contact: str = Field(examples=["whatsapp:+5511999990000"])
    sender: str = Field(examples=["whatsapp:+14155238886"])
    state: State
    owner: str | None = Field(description="The operator who owns it while `human`.")
    opted_out: bool
    window_open_until: datetime | None = Field(
        description="Free-form messages are allowed until then (WhatsApp's 24-hour window)."
    )
    last_message_at: datetime | None
    last_message_preview: str | None
    unread_count: int
    started_at: datetime
    updated_at: datetime


class ConversationPage(BaseModel):
    items: list[Conversation]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class Media(BaseModel):
    url: str
    content_type: str | None = None


class MessageOut(BaseModel):
    message_id: str = Field(description="Twilio's MessageSid (inbound) or zapflow's outbound id.")
    direction: Literal["inbound", "outbound"]
    author: Literal["contact", "bot", "human"]
    body: str | None
    media: list[Media]
    content_sid: str | None
    twilio_sid: str | None
    status: str | None
    error_code: str | None
    created_at: datetime


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


def _instant(text: str | None) -> datetime | None:
    """An RFC 3339 instant with its offset; anything else (a number, no offset) is a 400."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or "T" not in text.upper():
        raise ApiError(400, "invalid_request", "updated_since: an RFC 3339 date-time with offset")
    return value


def _container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def _conversation_id(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise ApiError(404, "not_found", "no such conversation") from None


Limit = Annotated[int, Query(ge=1, le=read.MAX_LIMIT, description="Page size.")]


@router.get(
    "/conversations",
    summary="List conversations, most recently updated first",
    responses=_ERRORS,
)
async def list_conversations(
    request: Request,
    tenant: ReadTenant,
    state: State | None = None,
    updated_since: Annotated[
        str | None,
        Query(
            json_schema_extra={"format": "date-time"},
            description="RFC 3339 with an offset, e.g. 2026-11-25T12:00:00Z.",
        ),
    ] = None,
    contact: str | None = None,
    q: Annotated[
        str | None, Query(max_length=200, description="Full-text search over message bodies.")
    ] = None,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> ConversationPage:
    if "\x00" in (contact or "") + (q or ""):
        raise ApiError(400, "invalid_request", "parameters may not contain NUL characters")
    where = read.ConversationFilter(state, _instant(updated_since), contact, q)
    try:
        async with read.tenant_scope(_container(request).reader, tenant) as conn:
            rows, next_cursor = await read.conversations(conn, tenant, where, limit, cursor)
    except read.BadCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return ConversationPage(items=[Conversation(**dict(r)) for r in rows], next_cursor=next_cursor)


@router.get(
    "/conversations/{conversation_id}",
    summary="One conversation",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def get_conversation(
    request: Request, tenant: ReadTenant, conversation_id: str
) -> Conversation:
    cid = _conversation_id(conversation_id)
    async with read.tenant_scope(_container(request).reader, tenant) as conn:
        row = await read.conversation(conn, tenant, cid)
    if row is None:
        raise ApiError(404, "not_found", "no such conversation")
    return Conversation(**dict(row))


@router.get(
    "/conversations/{conversation_id}/messages",
    summary="A conversation's messages, oldest first",
    responses={**_ERRORS, **_NOT_FOUND},
)
async def list_messages(
    request: Request,
    tenant: ReadTenant,
    conversation_id: str,
    limit: Limit = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> MessagePage:
    cid = _conversation_id(conversation_id)
    try:
        async with read.tenant_scope(_container(request).reader, tenant) as conn:
            if await read.conversation(conn, tenant, cid) is None:
                raise ApiError(404, "not_found", "no such conversation")
            rows, next_cursor = await read.messages(conn, tenant, cid, limit, cursor)
    except read.BadCursor as exc:
        raise ApiError(400, "invalid_cursor", str(exc)) from None
    return MessagePage(items=[_message(r) for r in rows], next_cursor=next_cursor)


def _message(row: asyncpg.Record) -> MessageOut:
    fields = dict(row)
    fields["media"] = orjson.loads(fields["media"])
    del fields["tenant_seq"]
    return MessageOut(**fields)


MAX_DAYS = 366


class DayMetrics(BaseModel):
    day: date
    inbound: int = Field(description="Messages from contacts.")
    outbound_bot: int = Field(description="Replies requested by the bot.")
    outbound_human: int = Field(description="Replies requested by human operators.")
    handoffs: int = Field(description="Conversations handed to a human.")
    closed: int
    opt_outs: int
    median_first_response_seconds: float | None = Field(
        description="Median time from a customer's first message of a turn to the next reply."
    )
    failures: dict[str, int] = Field(description="Failed deliveries by Twilio error code.")


class MetricsPage(BaseModel):
    days: list[DayMetrics]


@router.get(
    "/metrics",
    summary="Daily activity: messages, replies by bot and human, hand-offs, first response",
    responses=_ERRORS,
)
async def daily_metrics(
    request: Request,
    tenant: ReadTenant,
    first: Annotated[date, Query(alias="from", description="First UTC day (inclusive).")],
    last: Annotated[date, Query(alias="to", description="Last UTC day (inclusive).")],
) -> MetricsPage:
    if last < first:
        raise ApiError(400, "invalid_request", "`to` is before `from`")
    if (last - first).days >= MAX_DAYS:
        raise ApiError(400, "invalid_request", f"at most {MAX_DAYS} days at a time")
    async with read.tenant_scope(_container(request).reader, tenant) as conn:
        days = await read.daily(conn, tenant, first, last)
    return MetricsPage(days=[DayMetrics(**asdict(day)) for day in days])
