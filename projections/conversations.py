"""Conversations, messages and contacts, projected from the conversation events (ADR 0011).

Each event is applied as the `zapflow_projector` role with the event's tenant set for the rest of
the transaction, so row-level security checks every write: a row with any other tenant's id is
refused by the database itself. `apply` is idempotent on its own (inserts ignore a row that
exists, updates are guarded), so a replayed event changes nothing even without the runner's
per-tenant sequence skip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from uuid import UUID

import orjson

from events import conversation as ev
from events.catalog import EVENT_REGISTRY
from events.envelope import EventEnvelope, wire_bytes
from events.identity import IDENTITY_EVENTS
from events.platform import CommandRejected
from events.registration import REGISTRATION_EVENTS
from events.registry import Message
from events.tenant import TENANT_LIFECYCLE_EVENTS, TenantRegistered
from projections import agent_costs
from projections.database import Conn

NAME: Final = "conversations"
TABLES: Final = (
    "conversations", "messages", "contacts", "command_results", "conversation_facts",
    "agent_turns",
)  # fmt: skip
"""The tables of one version (`projections.versions`; schema file schemas/projections/)."""
PROJECTOR_ROLE: Final = "zapflow_projector"
PREVIEW_CHARS: Final = 200
STATUS_ORDER: Final = ("queued", "sending", "sent", "delivered", "read")
"""Statuses that move forward in this order; `failed` and `undelivered` end a message."""


_START: Final = """
INSERT INTO conversations (tenant_id, conversation_id, contact, sender, state, started_at,
                           updated_at)
VALUES ($1, $2, $3, $4, 'bot', $5, $5)
ON CONFLICT DO NOTHING
"""
_CONTACT_SEEN: Final = """
INSERT INTO contacts (tenant_id, contact, opted_out, updated_at) VALUES ($1, $2, false, $3)
ON CONFLICT DO NOTHING
"""
# Messages of one tenant and batch in one statement; RETURNING tells which are new (a replayed
# message is not), and only new ones move their conversation (`_CONVERSATIONS`).
_MESSAGE: Final = """
INSERT INTO messages (tenant_id, message_id, conversation_id, direction, author, body, media,
                      content_sid, twilio_sid, status, created_at, tenant_seq)
SELECT $1, u.* FROM unnest($2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                           $7::jsonb[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],
                           $12::bigint[]) AS u
ON CONFLICT DO NOTHING
RETURNING message_id
"""
# One update per conversation and batch: the last new message, the unread count (an inbound
# message is one more unread, a reply by the bot or a human reads them all) and the window.
_CONVERSATIONS: Final = """
UPDATE conversations c SET
    last_message_at = u.at,
    last_message_preview = u.preview,
    unread_count = CASE WHEN u.replied THEN u.unread ELSE c.unread_count + u.unread END,
    updated_at = greatest(c.updated_at, u.updated),
    window_open_until = greatest(c.window_open_until, u.win)
FROM unnest($2::uuid[], $3::timestamptz[], $4::text[], $5::bool[], $6::int[],
            $7::timestamptz[], $8::timestamptz[])
     AS u(cid, at, preview, replied, unread, updated, win)
WHERE c.tenant_id = $1 AND c.conversation_id = u.cid
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
# The sender's result, once: the SID (of the last part) that status callbacks name from now on.
_OUTCOME: Final = """
UPDATE messages SET twilio_sid = coalesce($3, twilio_sid), status = $4, error_code = $5
WHERE tenant_id = $1 AND message_id = $2 AND status = 'requested'
"""
_STATE: Final = """
UPDATE conversations SET state = $3, owner = $4, updated_at = greatest(updated_at, $5)
WHERE tenant_id = $1 AND conversation_id = $2
"""
_OPT: Final = """
WITH changed AS (
    UPDATE conversations SET opted_out = $3, updated_at = greatest(updated_at, $4)
    WHERE tenant_id = $1 AND conversation_id = $2
    RETURNING tenant_id, contact
)
INSERT INTO contacts (tenant_id, contact, opted_out, updated_at)
SELECT tenant_id, contact, $3, $4 FROM changed
ON CONFLICT (tenant_id, contact) DO UPDATE SET opted_out = EXCLUDED.opted_out,
    updated_at = EXCLUDED.updated_at
WHERE contacts.updated_at <= EXCLUDED.updated_at
"""
_RESULT: Final = """
INSERT INTO command_results (tenant_id, command_id, outcome, command_type, reason_code, reason,
                             tenant_seq, recorded_at)
SELECT $1, u.* FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::bigint[], $8::timestamptz[]) AS u
ON CONFLICT DO NOTHING
"""
_FACT: Final = """
INSERT INTO conversation_facts (tenant_id, event_id, conversation_id, day, kind, code)
VALUES ($1, $2, $3, ($4::timestamptz AT TIME ZONE 'UTC')::date, $5, $6)
ON CONFLICT DO NOTHING
"""
_TURN: Final = """
INSERT INTO agent_turns (tenant_id, turn_id, conversation_id, trigger_message_id, agent, model,
                         prompt_hash, reply_message_id, tool_calls, tokens_in, tokens_out,
                         cost_estimate_usd, latency_ms, created_at, tenant_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14, $15)
ON CONFLICT DO NOTHING
"""
_SET_BASED: Final = frozenset({_MESSAGE, _RESULT})
"""Statements that take the whole batch's rows as arrays (`unnest`), not one row per call."""
# Statements run in this order, each once per tenant per batch with all its rows in log order.
# Safe because they touch different columns, except `updated_at`, which only moves forward
# (greatest), and a conversation's row, which `_START` creates first.
_PHASES: Final = (
    _START, _CONTACT_SEEN, _MESSAGE, _OUTCOME, _STATUS, _STATE, _OPT, _FACT, _TURN, _RESULT,
)  # fmt: skip

type Row = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Versioned:
    """The projection that maintains one version. Version 1 is where the migrations put the
    tables (`public`) and keeps the plain position name it always had; a later version's
    positions and schema are both named `conversations_vN`."""

    version: int

    @property
    def name(self) -> str:
        return NAME if self.version == 1 else f"{NAME}_v{self.version}"

    @property
    def schema(self) -> str:
        return "public" if self.version == 1 else self.name

    async def apply(self, conn: Conn, envelope: EventEnvelope) -> None:
        await apply_batch(conn, [envelope], self.schema)

    async def apply_batch(self, conn: Conn, envelopes: Sequence[EventEnvelope]) -> None:
        await apply_batch(conn, envelopes, self.schema)


async def apply(conn: Conn, envelope: EventEnvelope, schema: str = "public") -> None:
    """Project one event (see `apply_batch`)."""
    await apply_batch(conn, [envelope], schema)


async def apply_batch(
    conn: Conn, envelopes: Sequence[EventEnvelope], schema: str = "public"
) -> None:
    """Project events in log order, inside the caller's transaction, as the projector role,
    into the tables of `schema` (one version of the read models).

    One statement per kind and tenant (messages and results as arrays, the rarer kinds with
    `executemany`): a batch of a thousand events is a few dozen round trips, not thousands.
    Row-level security checks every row against the tenant set. The role and the search path
    are the caller's again afterwards (the runner writes its positions in the same transaction).
    """
    planned: dict[UUID, dict[str, list[Row]]] = {}
    for envelope in envelopes:
        if envelope.type not in _RELEVANT:
            continue
        event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
        rows = planned.setdefault(envelope.tenant_id, {})
        clean = not _may_hold_nul(envelope)
        for statement, row in _plan(envelope, event):
            rows.setdefault(statement, []).append(
                row if clean else tuple(_storable(value) for value in row)
            )
    if not planned:
        return
    path = await conn.fetchval(  # the target list is evaluated in order: the old path first
        "SELECT current_setting('search_path'), set_config('role', $1, true),"
        " set_config('search_path', $2, true)",
        PROJECTOR_ROLE, schema,
    )  # fmt: skip
    for tenant, rows in planned.items():
        await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
        for statement in _PHASES:
            if statement not in rows:
                continue
            if statement is _MESSAGE:
                await _messages(conn, tenant, rows[statement])
            elif statement in _SET_BASED:
                await conn.execute(statement, tenant, *_columns(rows[statement], skip=1))
            else:
                await conn.executemany(statement, rows[statement])
    await conn.execute(
        "SELECT set_config('role', 'none', true), set_config('search_path', $1, true)", path
    )


def _columns(rows: list[Row], skip: int = 0) -> list[list[object]]:
    """Rows as one list per column (for `unnest`), leaving out the first `skip` columns."""
    return [list(column) for column in zip(*(row[skip:] for row in rows), strict=True)]


@dataclass(slots=True)
class _Moved:
    """What a batch's new messages do to one conversation."""

    at: datetime
    preview: str
    updated: datetime
    replied: bool = False
    unread: int = 0
    window: datetime | None = None

    def row(self, cid: UUID) -> Row:
        return (cid, self.at, self.preview, self.replied, self.unread, self.updated, self.window)


async def _messages(conn: Conn, tenant: UUID, rows: list[Row]) -> None:
    """Insert a batch's messages, then move each conversation by its new messages only."""
    inserted = {
        r["message_id"]
        for r in await conn.fetch(_MESSAGE, tenant, *_columns([row[:12] for row in rows], 1))
    }
    moved: dict[UUID, _Moved] = {}
    for row in rows:
        message_id, cid, direction, created_at = row[1], row[2], row[3], row[10]
        preview, updated, window = row[12], row[13], row[14]
        if message_id not in inserted:
            continue
        inserted.discard(message_id)  # the same message twice in a batch counts once
        assert isinstance(cid, UUID)
        assert isinstance(created_at, datetime)
        assert isinstance(preview, str)
        assert isinstance(updated, datetime)
        state = moved.get(cid)
        if state is None:
            state = moved[cid] = _Moved(created_at, preview, updated)
        state.at, state.preview, state.updated = created_at, preview, max(state.updated, updated)
        if direction == "inbound":
            assert isinstance(window, datetime)
            state.unread += 1
            state.window = window if state.window is None else max(state.window, window)
        else:
            state.replied, state.unread = True, 0
    if moved:
        await conn.execute(
            _CONVERSATIONS, tenant, *_columns([state.row(cid) for cid, state in moved.items()])
        )


def _may_hold_nul(envelope: EventEnvelope) -> bool:
    """False when no string of the event can hold a NUL: its JSON has no escaped one (JSON
    cannot carry a raw NUL). One search of the record's bytes instead of a look at every value."""
    wire = wire_bytes(envelope)
    return wire is None or b"\\u0000" in wire


def _storable(value: object) -> object:
    """PostgreSQL text and jsonb refuse NUL, which a customer or an operator can send: it becomes
    U+FFFD here, or one such message would stop its whole partition (every tenant on it)."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


def _plan(envelope: EventEnvelope, event: Message) -> list[tuple[str, Row]]:
    """The statements (and their arguments) one event contributes."""
    tenant, at, seq = envelope.tenant_id, envelope.recorded_at, envelope.tenant_seq
    out: list[tuple[str, Row]] = []
    match event:
        case ev.ConversationStarted():
            cid = UUID(event.conversation_id)
            out.append((_START, (tenant, cid, event.contact, event.sender, envelope.occurred_at)))
            out.append((_CONTACT_SEEN, (tenant, event.contact, envelope.occurred_at)))
        case ev.InboundMessageReceived():
            media = orjson.dumps([m.model_dump(mode="json") for m in event.media]).decode()
            media = media.replace("\\u0000", "\ufffd")  # jsonb refuses an escaped NUL too
            out.append((_MESSAGE, (
                tenant, event.message_sid, UUID(event.conversation_id), "inbound", "contact",
                event.body, media, None, event.message_sid, "received", event.received_at, seq,
                event.body[:PREVIEW_CHARS], at, event.window_open_until,
            )))  # fmt: skip
        case ev.OutboundMessageRequested():
            preview = event.body if event.body is not None else f"[template {event.content_sid}]"
            out.append((_MESSAGE, (
                tenant, event.outbound_id, UUID(event.conversation_id), "outbound", event.author,
                event.body, "[]", event.content_sid, None, "requested", envelope.occurred_at,
                seq, preview[:PREVIEW_CHARS], at, None,
            )))  # fmt: skip
        case ev.OutboundMessageSent():
            sid = event.message_sids[-1]
            out.append((_OUTCOME, (tenant, event.outbound_id, sid, event.status,
                                   event.error_code)))  # fmt: skip
        case ev.OutboundMessageFailed():
            last = event.message_sids[-1] if event.message_sids else None
            out.append((_OUTCOME, (tenant, event.outbound_id, last, "failed", event.error_code)))
        case ev.OutboundMessageBlocked():
            out.append((_OUTCOME, (tenant, event.outbound_id, None, "blocked", event.reason)))
        case ev.DeliveryStatusChanged():
            out.append((_STATUS, (tenant, event.message_sid, event.status, event.error_code,
                                  list(STATUS_ORDER))))  # fmt: skip
        case ev.ContactOptedOut() | ev.ContactOptedIn():
            opted_out = isinstance(event, ev.ContactOptedOut)
            out.append((_OPT, (tenant, UUID(event.conversation_id), opted_out, at)))
        case ev.HandoffRequested():
            out.append(
                (_STATE, (tenant, UUID(event.conversation_id), "handoff_requested", None, at))
            )
        case ev.ConversationHandedOff():
            out.append((_STATE, (tenant, UUID(event.conversation_id), "human", event.operator, at)))
        case ev.ConversationClosed():
            out.append((_STATE, (tenant, UUID(event.conversation_id), "closed", None, at)))
        case ev.ConversationReturnedToBot() | ev.ConversationReopened():
            out.append((_STATE, (tenant, UUID(event.conversation_id), "bot", None, at)))
        case ev.AgentReplied():
            calls = orjson.dumps([call.model_dump(mode="json") for call in event.tool_calls])
            cost = agent_costs.estimate(event.model, event.tokens_in, event.tokens_out)
            out.append((_TURN, (
                tenant, event.turn_id, UUID(event.conversation_id), event.trigger_message_sid,
                event.agent, event.model, event.prompt_hash, event.outbound_id,
                calls.decode().replace("\\u0000", "\ufffd"), event.tokens_in, event.tokens_out,
                cost, event.latency_ms, envelope.occurred_at, seq,
            )))  # fmt: skip
    fact = _fact(event)
    if fact is not None:
        cid = UUID(getattr(event, "conversation_id"))  # noqa: B009 - facts are conversation events
        out.append((_FACT, (tenant, envelope.event_id, cid, at, *fact)))
    if isinstance(event, CommandRejected):
        if event.command_type not in _WEBHOOK_COMMANDS:
            outcome: Row = ("rejected", event.command_type, event.reason_code, event.reason)
            out.append((_RESULT, (tenant, envelope.causation_id, *outcome, seq, at)))
    elif envelope.type not in _WEBHOOK_EVENTS:
        outcome = ("accepted", None, None, None)
        out.append((_RESULT, (tenant, envelope.causation_id, *outcome, seq, at)))
    return out


def _fact(event: Message) -> tuple[str, str | None] | None:
    """The countable fact an event is, if any: (kind, code)."""
    match event:
        case ev.ConversationHandedOff():
            return "handoff", None
        case ev.ConversationClosed():
            return "closed", None
        case ev.ContactOptedOut():
            return "opted_out", None
        case ev.DeliveryStatusChanged() if event.status in ("failed", "undelivered"):
            return "failed", event.error_code
        case ev.OutboundMessageFailed():
            return "failed", event.error_code
    return None


# `command_results` is for callers that wait on their command (`?wait=true`): the commands that
# arrive by webhook (and their events, most of the log) have none, so they record no result.
# The sender's results are not waited on either.
_WEBHOOK_COMMANDS: Final = frozenset(
    {"ReceiveInboundMessage", "RecordDeliveryStatus", "RecordSendResult"}
)
_WEBHOOK_EVENTS: Final = frozenset(
    model.model_fields["type"].default
    for model in (
        ev.ConversationStarted, ev.ConversationReopened, ev.InboundMessageReceived,
        ev.ContactOptedOut, ev.ContactOptedIn, ev.DeliveryStatusChanged,
        ev.OutboundMessageSent, ev.OutboundMessageFailed, ev.OutboundMessageBlocked,
    )
)  # fmt: skip

_RELEVANT: Final = frozenset(
    {
        "CommandRejected",
        "AgentConfigured",  # its command's result only: `zapflow agents configure --wait`
        *(model.model_fields["type"].default for model in ev.CONVERSATION_EVENTS),
        # Their commands' results only: the identity and admin API wait on them (ADR 0019).
        *(
            model.model_fields["type"].default
            for model in (
                *IDENTITY_EVENTS,
                *REGISTRATION_EVENTS,
                *TENANT_LIFECYCLE_EVENTS,
                TenantRegistered,
            )
        ),
    }
)
