"""Conversations, messages and contacts, projected from the conversation events (ADR 0011).

Each event is applied as the `zapflow_projector` role with the event's tenant set for the rest of
the transaction, so row-level security checks every write: a row with any other tenant's id is
refused by the database itself. `apply` is idempotent on its own (inserts ignore a row that
exists, updates are guarded), so a replayed event changes nothing even without the runner's
per-tenant sequence skip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final
from uuid import UUID

import orjson

from events import conversation as ev
from events.catalog import EVENT_REGISTRY
from events.envelope import EventEnvelope
from events.platform import CommandRejected
from events.registry import Message
from projections.database import Conn

NAME: Final = "conversations"
PROJECTOR_ROLE: Final = "zapflow_projector"
PREVIEW_CHARS: Final = 200
STATUS_ORDER: Final = ("queued", "sending", "sent", "delivered", "read")
"""Statuses that move forward in this order; `failed` and `undelivered` end a message."""

_ENTER: Final = "SELECT set_config('role', $1, true), set_config('app.tenant_id', $2, true)"

_START: Final = """
INSERT INTO conversations (tenant_id, conversation_id, contact, sender, state, started_at,
                           updated_at)
VALUES ($1, $2, $3, $4, 'bot', $5, $5)
ON CONFLICT DO NOTHING
"""
_CONTACT: Final = """
INSERT INTO contacts (tenant_id, contact, opted_out, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (tenant_id, contact) DO UPDATE SET opted_out = EXCLUDED.opted_out,
    updated_at = EXCLUDED.updated_at
WHERE contacts.updated_at <= EXCLUDED.updated_at
"""
_CONTACT_SEEN: Final = """
INSERT INTO contacts (tenant_id, contact, opted_out, updated_at) VALUES ($1, $2, false, $3)
ON CONFLICT DO NOTHING
"""
_INBOUND: Final = """
WITH added AS (
    INSERT INTO messages (tenant_id, message_id, conversation_id, direction, author, body, media,
                          twilio_sid, status, created_at, tenant_seq)
    VALUES ($1, $2, $3, 'inbound', 'contact', $4, $5::jsonb, $2, 'received', $6, $7)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
UPDATE conversations SET last_message_at = $6, last_message_preview = left($4, $9),
    unread_count = unread_count + 1, updated_at = $8,
    window_open_until = greatest(window_open_until, $10)
WHERE tenant_id = $1 AND conversation_id = $3 AND EXISTS (SELECT FROM added)
"""
_OUTBOUND: Final = """
WITH added AS (
    INSERT INTO messages (tenant_id, message_id, conversation_id, direction, author, body,
                          content_sid, status, created_at, tenant_seq)
    VALUES ($1, $2, $3, 'outbound', $4, $5, $6, 'requested', $7, $8)
    ON CONFLICT DO NOTHING
    RETURNING 1
)
UPDATE conversations SET last_message_at = $7,
    last_message_preview = left(coalesce($5, '[template ' || $6 || ']'), $9),
    unread_count = 0, updated_at = $7
WHERE tenant_id = $1 AND conversation_id = $3 AND EXISTS (SELECT FROM added)
"""
# Forward only: a known status never moves back; failed/undelivered are final.
_STATUS: Final = """
UPDATE messages SET status = $3, error_code = $4
WHERE tenant_id = $1 AND twilio_sid = $2
  AND coalesce(status, '') NOT IN ('failed', 'undelivered')
  AND (array_position($5::text[], status) IS NULL
       OR $3 IN ('failed', 'undelivered')
       OR array_position($5::text[], $3) > array_position($5::text[], status))
"""
_STATE: Final = """
UPDATE conversations SET state = $3, owner = $4, updated_at = $5
WHERE tenant_id = $1 AND conversation_id = $2
"""
_OPT: Final = """
UPDATE conversations SET opted_out = $3, updated_at = $4
WHERE tenant_id = $1 AND conversation_id = $2
RETURNING contact
"""

_RESULT: Final = """
INSERT INTO command_results (tenant_id, command_id, outcome, command_type, reason_code, reason,
                             tenant_seq, recorded_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT DO NOTHING
"""

type Handler = Callable[[Conn, EventEnvelope, Message], Awaitable[None]]


async def apply(conn: Conn, envelope: EventEnvelope) -> None:
    """Project one event as the projector role, inside the caller's transaction."""
    handler = _HANDLERS.get(envelope.type)
    rejected = envelope.type == "CommandRejected"
    if handler is None and not rejected:
        return
    event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    await conn.execute(_ENTER, PROJECTOR_ROLE, str(envelope.tenant_id))
    if handler is not None:
        await handler(conn, envelope, event)
    await _result(conn, envelope, event)
    await conn.execute("RESET ROLE")


async def _result(conn: Conn, envelope: EventEnvelope, event: Message) -> None:
    """The command's outcome: its first event says accepted, or rejected and why."""
    outcome: tuple[str, str | None, str | None, str | None]
    if isinstance(event, CommandRejected):
        outcome = ("rejected", event.command_type, event.reason_code, event.reason)
    else:
        outcome = ("accepted", None, None, None)
    await conn.execute(
        _RESULT, envelope.tenant_id, envelope.causation_id, *outcome, envelope.tenant_seq,
        envelope.recorded_at,
    )  # fmt: skip


def _cid(event: Message) -> UUID:
    return UUID(getattr(event, "conversation_id"))  # noqa: B009 - every handled event has one


async def _started(conn: Conn, envelope: EventEnvelope, event: Message) -> None:
    assert isinstance(event, ev.ConversationStarted)
    tenant, at = envelope.tenant_id, envelope.occurred_at
    await conn.execute(_START, tenant, _cid(event), event.contact, event.sender, at)
    await conn.execute(_CONTACT_SEEN, tenant, event.contact, at)


async def _inbound(conn: Conn, envelope: EventEnvelope, event: Message) -> None:
    assert isinstance(event, ev.InboundMessageReceived)
    media = orjson.dumps([m.model_dump(mode="json") for m in event.media]).decode()
    await conn.execute(
        _INBOUND, envelope.tenant_id, event.message_sid, _cid(event), event.body, media,
        event.received_at, envelope.tenant_seq, envelope.recorded_at, PREVIEW_CHARS,
        event.window_open_until,
    )  # fmt: skip


async def _outbound(conn: Conn, envelope: EventEnvelope, event: Message) -> None:
    assert isinstance(event, ev.OutboundMessageRequested)
    await conn.execute(
        _OUTBOUND, envelope.tenant_id, event.outbound_id, _cid(event), event.author, event.body,
        event.content_sid, envelope.occurred_at, envelope.tenant_seq, PREVIEW_CHARS,
    )  # fmt: skip


async def _status(conn: Conn, envelope: EventEnvelope, event: Message) -> None:
    assert isinstance(event, ev.DeliveryStatusChanged)
    await conn.execute(
        _STATUS, envelope.tenant_id, event.message_sid, event.status, event.error_code,
        list(STATUS_ORDER),
    )  # fmt: skip


async def _opt(conn: Conn, envelope: EventEnvelope, event: Message) -> None:
    assert isinstance(event, ev.ContactOptedOut | ev.ContactOptedIn)
    opted_out = isinstance(event, ev.ContactOptedOut)
    tenant, at = envelope.tenant_id, envelope.recorded_at
    contact = await conn.fetchval(_OPT, tenant, _cid(event), opted_out, at)
    if contact is not None:
        await conn.execute(_CONTACT, tenant, contact, opted_out, at)


async def _state(conn: Conn, envelope: EventEnvelope, event: Message) -> None:
    match event:
        case ev.HandoffRequested():
            state, owner = "handoff_requested", None
        case ev.ConversationHandedOff():
            state, owner = "human", event.operator
        case ev.ConversationClosed():
            state, owner = "closed", None
        case ev.ConversationReturnedToBot() | ev.ConversationReopened():
            state, owner = "bot", None
        case _:
            raise TypeError(f"{event.type} is not a state change")
    await conn.execute(_STATE, envelope.tenant_id, _cid(event), state, owner, envelope.recorded_at)


_HANDLERS: Final[dict[str, Handler]] = {
    "ConversationStarted": _started,
    "InboundMessageReceived": _inbound,
    "OutboundMessageRequested": _outbound,
    "DeliveryStatusChanged": _status,
    "ContactOptedOut": _opt,
    "ContactOptedIn": _opt,
    "HandoffRequested": _state,
    "ConversationHandedOff": _state,
    "ConversationReturnedToBot": _state,
    "ConversationClosed": _state,
    "ConversationReopened": _state,
}
