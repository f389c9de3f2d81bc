"""The conversation aggregate: pure `decide` and `evolve` for one (tenant, contact) conversation.

States: bot → handoff_requested → human → bot …, any → closed, closed → bot on a new inbound
message (reopened, ADR 0007). `opted_out` and `window_open_until` are orthogonal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final, assert_never
from uuid import UUID, uuid5

from commands.agent import CLOSE_TOOL, HANDOFF_TOOL, RecordAgentTurn
from commands.errors import Rejected
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.keywords import keyword
from commands.operator import (
    CloseConversation,
    HandOffToHuman,
    RequestHandoff,
    RequestOutboundMessage,
    ReturnToBot,
)
from commands.policy import check_send
from commands.status import advance
from events.conversation import (
    AgentReplied,
    AgentTurnDiscarded,
    ContactOptedIn,
    ContactOptedOut,
    ConversationClosed,
    ConversationEvent,
    ConversationHandedOff,
    ConversationReopened,
    ConversationReturnedToBot,
    ConversationStarted,
    DeliveryStatusChanged,
    HandoffRequested,
    InboundMessageReceived,
    OutboundMessageRequested,
    State,
    Status,
    ToolCall,
)

SERVICE_WINDOW: Final = timedelta(hours=24)
_NOT_IN_INBOUND_EVENT: Final = frozenset({"type", "schema_version", "account_sid"})

type ConversationCommand = (
    ReceiveInboundMessage
    | RecordDeliveryStatus
    | RequestHandoff
    | HandOffToHuman
    | ReturnToBot
    | CloseConversation
    | RequestOutboundMessage
    | RecordAgentTurn
)


CONVERSATION_COMMANDS: Final = (
    ReceiveInboundMessage,
    RecordDeliveryStatus,
    RequestHandoff,
    HandOffToHuman,
    ReturnToBot,
    CloseConversation,
    RequestOutboundMessage,
    RecordAgentTurn,
)


@lru_cache(maxsize=65_536)
def conversation_id(tenant_id: UUID, contact: str) -> str:
    """One conversation per (tenant, contact address), whatever the address's shape."""
    return str(uuid5(tenant_id, f"conversation:{contact}"))


@dataclass(frozen=True, slots=True)
class Conversation:
    conversation_id: str
    started: bool = False
    contact: str = ""
    sender: str = ""
    state: State = "bot"
    opted_out: bool = False
    window_open_until: datetime | None = None
    inbound_sids: frozenset[str] = frozenset()
    statuses: dict[str, Status] = field(default_factory=dict)
    last_inbound_sid: str | None = None
    answered: frozenset[str] = frozenset()
    """Inbound messages whose agent turn has an outcome (replied or discarded)."""


@dataclass(frozen=True, slots=True)
class Context:
    """What a decision may depend on besides state: from the command envelope and its record.

    `now` is when the command was issued (an inbound message's receipt opens the window then);
    `latest` is the later of that and when the command reached the log, so a send issued inside
    the window but decided after it closed (a backlog, the spool) is judged when it goes out.
    """

    command_id: UUID
    now: datetime
    latest: datetime | None = None

    @property
    def send_time(self) -> datetime:
        return self.now if self.latest is None else max(self.now, self.latest)


def decide(
    current: Conversation, command: ConversationCommand, ctx: Context
) -> list[ConversationEvent]:
    cid = current.conversation_id
    match command:
        case ReceiveInboundMessage():
            return _receive(current, command, ctx)
        case RecordDeliveryStatus():
            moved = advance(current.statuses.get(command.message_sid), command.status)
            if moved is None:
                return []  # a duplicate or an out-of-order callback: nothing new happened
            return [
                DeliveryStatusChanged(
                    conversation_id=cid,
                    message_sid=command.message_sid,
                    status=moved,
                    previous_status=current.statuses.get(command.message_sid),
                    error_code=command.error_code,
                    error_message=command.error_message,
                )
            ]
        case RequestHandoff():
            _require(current, allowed={"bot"}, action="request a hand-off")
            return [HandoffRequested(conversation_id=cid, reason=command.reason,
                                     requested_by=command.requested_by)]  # fmt: skip
        case HandOffToHuman():
            _require(current, allowed={"bot", "handoff_requested"}, action="hand off")
            return [ConversationHandedOff(conversation_id=cid, operator=command.operator,
                                          reason=command.reason)]  # fmt: skip
        case ReturnToBot():
            _require(current, allowed={"human", "handoff_requested"}, action="return to the bot")
            return [ConversationReturnedToBot(conversation_id=cid, operator=command.operator)]
        case CloseConversation():
            _require(current, allowed={"bot", "handoff_requested", "human"}, action="close")
            return [ConversationClosed(conversation_id=cid, reason=command.reason,
                                       closed_by=command.closed_by)]  # fmt: skip
        case RequestOutboundMessage():
            _require(
                current, allowed={"bot", "handoff_requested", "human", "closed"}, action="send"
            )
            check_send(
                author=command.author,
                state=current.state,
                opted_out=current.opted_out,
                window_open_until=current.window_open_until,
                now=ctx.send_time,
                is_template=command.content_sid is not None,
            )
            return [
                OutboundMessageRequested(
                    conversation_id=cid,
                    outbound_id=str(uuid5(ctx.command_id, "outbound")),
                    author=command.author,
                    contact=current.contact,
                    sender=current.sender,
                    body=command.body,
                    content_sid=command.content_sid,
                    content_variables=command.content_variables,
                )
            ]
        case RecordAgentTurn():
            return _turn(current, command, ctx)
        case _:
            assert_never(command)


def _turn(current: Conversation, command: RecordAgentTurn, ctx: Context) -> list[ConversationEvent]:
    cid, trigger = current.conversation_id, command.trigger_message_sid
    if not current.started:
        raise Rejected("unknown_conversation", "cannot record a turn: no such conversation")
    if trigger not in current.inbound_sids:
        raise Rejected("unknown_trigger", f"no inbound message {trigger} in this conversation")
    if trigger in current.answered:
        raise Rejected("turn_already_recorded", f"message {trigger} already has a turn outcome")
    discard = None
    if current.state != "bot":
        discard = AgentTurnDiscarded(conversation_id=cid, turn_id=command.turn_id,
                                     trigger_message_sid=trigger, reason="not_bot",
                                     detail=f"the conversation is {current.state}")  # fmt: skip
    elif current.opted_out:
        discard = AgentTurnDiscarded(conversation_id=cid, turn_id=command.turn_id,
                                     trigger_message_sid=trigger, reason="opted_out")  # fmt: skip
    elif trigger != current.last_inbound_sid:
        discard = AgentTurnDiscarded(
            conversation_id=cid, turn_id=command.turn_id, trigger_message_sid=trigger,
            reason="superseded", detail=f"{current.last_inbound_sid} arrived after it",
        )  # fmt: skip
    if discard is not None:
        return [discard]
    outbound_id = str(uuid5(ctx.command_id, "outbound")) if command.reply else None
    events: list[ConversationEvent] = [
        AgentReplied(
            conversation_id=cid, turn_id=command.turn_id, trigger_message_sid=trigger,
            agent=command.agent, model=command.model, prompt_hash=command.prompt_hash,
            reply=command.reply, outbound_id=outbound_id, tool_calls=command.tool_calls,
            tokens_in=command.tokens_in, tokens_out=command.tokens_out,
            latency_ms=command.latency_ms,
        )
    ]  # fmt: skip
    if command.reply is not None:
        try:
            check_send(author="bot", state=current.state, opted_out=current.opted_out,
                       window_open_until=current.window_open_until, now=ctx.send_time,
                       is_template=False)  # fmt: skip
        except Rejected as refused:
            if refused.code != "outside_service_window":  # state and opt-out were checked above
                raise
            # Too late to answer (a backlog): an outcome all the same, or the runner would ask
            # the model again after every restart.
            return [AgentTurnDiscarded(conversation_id=cid, turn_id=command.turn_id,
                                       trigger_message_sid=trigger,
                                       reason="outside_service_window",
                                       detail=refused.reason)]  # fmt: skip
        events.append(OutboundMessageRequested(
            conversation_id=cid, outbound_id=outbound_id or "", author="bot",
            contact=current.contact, sender=current.sender, body=command.reply,
        ))  # fmt: skip
    accepted = {call.name: call for call in command.tool_calls if call.accepted}
    if command.fallback_reason is not None or HANDOFF_TOOL in accepted:
        reason = command.fallback_reason or _reason(accepted[HANDOFF_TOOL], "asked by the bot")
        events.append(HandoffRequested(conversation_id=cid, reason=reason, requested_by="bot"))
    elif CLOSE_TOOL in accepted:
        reason = _reason(accepted[CLOSE_TOOL], "closed by the bot")
        events.append(ConversationClosed(conversation_id=cid, reason=reason, closed_by="bot"))
    return events


def _reason(call: ToolCall, default: str) -> str:
    reason = call.arguments.get("reason")
    return reason[:500] if isinstance(reason, str) and reason else default


def _require(current: Conversation, *, allowed: set[str], action: str) -> None:
    if not current.started:
        raise Rejected("unknown_conversation", f"cannot {action}: no such conversation")
    if current.state not in allowed:
        raise Rejected(f"invalid_state_{current.state}", f"cannot {action} while {current.state}")


def _receive(
    current: Conversation, command: ReceiveInboundMessage, ctx: Context
) -> list[ConversationEvent]:
    cid, sid = current.conversation_id, command.message_sid
    if sid in current.inbound_sids:
        return []  # Twilio retried, or the webhook was replayed: recorded exactly once
    events: list[ConversationEvent] = []
    if not current.started:
        events.append(ConversationStarted(conversation_id=cid, contact=command.contact,
                                          sender=command.sender))  # fmt: skip
    elif current.state == "closed":
        events.append(ConversationReopened(conversation_id=cid, message_sid=sid))
    # The command's own values (nested parts stay validated model instances): cheaper than a
    # dump that the event's validation would parse straight back.
    fields = {k: v for k, v in command.__dict__.items() if k not in _NOT_IN_INBOUND_EVENT}
    events.append(
        InboundMessageReceived(
            **fields,
            conversation_id=cid,
            received_at=ctx.now,
            window_open_until=ctx.now + SERVICE_WINDOW,
        )
    )
    consent = keyword(command.body)
    if consent is not None and consent[0] == "opt_out" and not current.opted_out:
        events.append(ContactOptedOut(conversation_id=cid, keyword=consent[1], message_sid=sid))
    if consent is not None and consent[0] == "opt_in" and current.opted_out:
        events.append(ContactOptedIn(conversation_id=cid, keyword=consent[1], message_sid=sid))
    return events


def evolve(current: Conversation, event: ConversationEvent) -> Conversation:
    match event:
        case ConversationStarted():
            return replace(current, started=True, contact=event.contact, sender=event.sender)
        case InboundMessageReceived():
            window = event.window_open_until
            if current.window_open_until is not None:  # messages may be decided out of order
                window = max(window, current.window_open_until)
            return replace(
                current, inbound_sids=current.inbound_sids | {event.message_sid},
                window_open_until=window, last_inbound_sid=event.message_sid,
            )  # fmt: skip
        case DeliveryStatusChanged():
            return replace(current, statuses={**current.statuses, event.message_sid: event.status})
        case ContactOptedOut():
            return replace(current, opted_out=True)
        case ContactOptedIn():
            return replace(current, opted_out=False)
        case HandoffRequested():
            return replace(current, state="handoff_requested")
        case ConversationHandedOff():
            return replace(current, state="human")
        case ConversationReturnedToBot() | ConversationReopened():
            return replace(current, state="bot")
        case ConversationClosed():
            return replace(current, state="closed")
        case OutboundMessageRequested():
            return current
        case AgentReplied() | AgentTurnDiscarded():
            return replace(current, answered=current.answered | {event.trigger_message_sid})
        case _:
            assert_never(event)
