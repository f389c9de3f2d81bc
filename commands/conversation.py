"""The conversation aggregate: pure `decide` and `evolve` for one (tenant, contact) conversation.

States: bot → handoff_requested → human → bot …, any → closed, closed → bot on a new inbound
message (reopened, ADR 0007). `opted_out` and `window_open_until` are orthogonal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Final, Literal, assert_never
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
from commands.send import WINDOW_CLOSED_CODE, RecordSendResult
from commands.status import advance
from events.conversation import (
    AgentReplied,
    AgentTurnDiscarded,
    Author,
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
    OutboundMessageBlocked,
    OutboundMessageFailed,
    OutboundMessageRequested,
    OutboundMessageSent,
    State,
    Status,
    ToolCall,
)
from events.tenant import Template

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
    | RecordSendResult
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
    RecordSendResult,
)


@lru_cache(maxsize=65_536)
def conversation_id(tenant_id: UUID, contact: str) -> str:
    """One conversation per (tenant, contact address), whatever the address's shape."""
    return str(uuid5(tenant_id, f"conversation:{contact}"))


@dataclass(frozen=True, slots=True)
class Send:
    """One outbound message as the decider knows it."""

    author: Author
    templated: bool
    fallback_for: str | None = None
    outcome: Literal["sent", "failed", "blocked"] | None = None
    fallback: str | None = None
    """The outbound id of the template sent in its place after a 63016."""
    sids: tuple[str, ...] = ()


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
    inbound_index: dict[str, int] = field(default_factory=dict)
    """Each inbound message's place in the conversation (0, 1, …)."""
    answered_upto: int = -1
    """The place of the newest inbound message with a turn outcome."""
    replied: frozenset[str] = frozenset()
    """Inbound messages whose agent turn was recorded (`AgentReplied`), not discarded."""
    sends: dict[str, Send] = field(default_factory=dict)
    sid_outbound: dict[str, str] = field(default_factory=dict)
    """Twilio SID → our outbound id, from the sender's results."""
    errors: dict[str, str] = field(default_factory=dict)
    """Twilio SID → the error code its failure callback carried."""


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
    window_template: Template | None = None
    """The tenant's approved template for a closed window (its agent settings), if any."""
    suspended: bool = False
    """The tenant is suspended: an agent turn is an outcome that sends nothing (ADR 0018)."""

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
            outbound_id = current.sid_outbound.get(command.message_sid)
            changed: list[ConversationEvent] = [
                DeliveryStatusChanged(
                    conversation_id=cid,
                    message_sid=command.message_sid,
                    status=moved,
                    previous_status=current.statuses.get(command.message_sid),
                    error_code=command.error_code,
                    error_message=command.error_message,
                    outbound_id=outbound_id,
                )
            ]
            if outbound_id is not None and command.error_code == WINDOW_CLOSED_CODE:
                changed += _fallback(current, outbound_id, ctx)
            return changed
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
        case RecordSendResult():
            return _send_result(current, command, ctx)
        case _:
            assert_never(command)


def _send_result(
    current: Conversation, command: RecordSendResult, ctx: Context
) -> list[ConversationEvent]:
    cid, oid = current.conversation_id, command.outbound_id
    send = current.sends.get(oid)
    if send is None:
        raise Rejected("unknown_outbound", f"no outbound message {oid} in this conversation")
    if send.outcome is not None:
        raise Rejected("send_already_recorded", f"outbound message {oid} is already {send.outcome}")
    match command.outcome:
        case "sent":
            last = current.statuses.get(command.message_sids[-1])
            events: list[ConversationEvent] = [
                OutboundMessageSent(conversation_id=cid, outbound_id=oid,
                                    message_sids=command.message_sids,
                                    content_sid=command.content_sid, status=last or "queued",
                                    error_code=current.errors.get(command.message_sids[-1]))
            ]  # fmt: skip
            # A 63016 callback can overtake the sender's result: the fallback starts here then.
            if any(current.errors.get(sid) == WINDOW_CLOSED_CODE for sid in command.message_sids):
                events += _fallback(current, oid, ctx, templated=command.content_sid is not None)
            return events
        case "failed":
            return [OutboundMessageFailed(conversation_id=cid, outbound_id=oid,
                                          error_code=command.error_code or "",
                                          error_message=command.error_message,
                                          message_sids=command.message_sids)]  # fmt: skip
        case "blocked":
            assert command.reason is not None
            blocked = OutboundMessageBlocked(
                conversation_id=cid, outbound_id=oid, reason=command.reason, detail=command.detail
            )
            return [blocked]
        case _:
            assert_never(command.outcome)


def _fallback(
    current: Conversation, outbound_id: str, ctx: Context, templated: bool | None = None
) -> list[ConversationEvent]:
    """A 63016 (the window had closed) gets the tenant's window template instead, once: not for
    a fallback or a template, not twice, not without a template, not to an opted-out contact."""
    send = current.sends[outbound_id]
    template = ctx.window_template
    if (
        template is None or current.opted_out or send.fallback_for is not None
        or send.fallback is not None or (send.templated if templated is None else templated)
    ):  # fmt: skip
        return []
    return [
        OutboundMessageRequested(
            conversation_id=current.conversation_id,
            outbound_id=str(uuid5(ctx.command_id, "fallback")), author=send.author,
            contact=current.contact, sender=current.sender, content_sid=template.content_sid,
            content_variables=template.variables, fallback_for=outbound_id,
        )
    ]  # fmt: skip


def _turn(current: Conversation, command: RecordAgentTurn, ctx: Context) -> list[ConversationEvent]:
    cid, trigger = current.conversation_id, command.trigger_message_sid
    if not current.started:
        raise Rejected("unknown_conversation", "cannot record a turn: no such conversation")
    if trigger not in current.inbound_sids:
        raise Rejected("unknown_trigger", f"no inbound message {trigger} in this conversation")
    if trigger in current.answered:
        raise Rejected("turn_already_recorded", f"message {trigger} already has a turn outcome")
    discard = None
    if ctx.suspended:
        # An outcome, not a rejection: the runner would otherwise ask the model again and again.
        discard = AgentTurnDiscarded(conversation_id=cid, turn_id=command.turn_id,
                                     trigger_message_sid=trigger, reason="tenant_suspended",
                                     detail="the tenant is suspended")  # fmt: skip
    elif current.state != "bot":
        discard = AgentTurnDiscarded(conversation_id=cid, turn_id=command.turn_id,
                                     trigger_message_sid=trigger, reason="not_bot",
                                     detail=f"the conversation is {current.state}")  # fmt: skip
    elif current.opted_out:
        discard = AgentTurnDiscarded(conversation_id=cid, turn_id=command.turn_id,
                                     trigger_message_sid=trigger, reason="opted_out")  # fmt: skip
    elif current.inbound_index[trigger] < current.answered_upto:
        # A late turn (a re-run after a restart): a newer message was answered already.
        discard = AgentTurnDiscarded(
            conversation_id=cid, turn_id=command.turn_id, trigger_message_sid=trigger,
            reason="superseded", detail="a newer message was answered first",
        )  # fmt: skip
    elif not current.replied.issuperset(command.builds_on):
        # Pipelined after a turn that was discarded (or never decided): its reply was written
        # after one the customer never got (ADR 0014).
        discard = AgentTurnDiscarded(
            conversation_id=cid, turn_id=command.turn_id, trigger_message_sid=trigger,
            reason="built_on_discarded",
            detail="its history held an earlier reply that was not sent",
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
            index = {**current.inbound_index, event.message_sid: len(current.inbound_index)}
            return replace(
                current, inbound_sids=current.inbound_sids | {event.message_sid},
                window_open_until=window, last_inbound_sid=event.message_sid,
                inbound_index=index,
            )  # fmt: skip
        case DeliveryStatusChanged():
            statuses = {**current.statuses, event.message_sid: event.status}
            if event.error_code is None:
                return replace(current, statuses=statuses)
            errors = {**current.errors, event.message_sid: event.error_code}
            return replace(current, statuses=statuses, errors=errors)
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
            sends = {**current.sends, event.outbound_id: Send(
                author=event.author, templated=event.content_sid is not None,
                fallback_for=event.fallback_for,
            )}  # fmt: skip
            if event.fallback_for is not None and event.fallback_for in sends:
                replaced = replace(sends[event.fallback_for], fallback=event.outbound_id)
                sends[event.fallback_for] = replaced
            return replace(current, sends=sends)
        case OutboundMessageSent():
            sends = dict(current.sends)
            if event.outbound_id in sends:
                sends[event.outbound_id] = replace(sends[event.outbound_id], outcome="sent",
                                                   templated=sends[event.outbound_id].templated
                                                   or event.content_sid is not None,
                                                   sids=tuple(event.message_sids))  # fmt: skip
            mapped = dict.fromkeys(event.message_sids, event.outbound_id)
            return replace(current, sends=sends, sid_outbound={**current.sid_outbound, **mapped})
        case OutboundMessageFailed() | OutboundMessageBlocked():
            if event.outbound_id not in current.sends:
                return current
            outcome: Literal["failed", "blocked"] = (
                "failed" if isinstance(event, OutboundMessageFailed) else "blocked"
            )
            done = replace(current.sends[event.outbound_id], outcome=outcome)
            return replace(current, sends={**current.sends, event.outbound_id: done})
        case AgentReplied() | AgentTurnDiscarded():
            trigger = event.trigger_message_sid
            place = current.inbound_index.get(trigger, -1)
            replied = {trigger} if isinstance(event, AgentReplied) else set()
            return replace(current, answered=current.answered | {trigger},
                           answered_upto=max(current.answered_upto, place),
                           replied=current.replied | replied)  # fmt: skip
        case _:
            assert_never(event)
