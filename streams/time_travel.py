"""Time travel: a conversation as it stood at a sequence number or an instant, from the log alone.

The tenant's events are folded in chain order with the decider's own `evolve` (the state
machine, opt-out, the 24-hour window, each send's outcome), and the tenant's `AgentConfigured`
events give the agent settings in force. Agent turns are folded from what the log recorded of
them (`AgentReplied`, the data of each `RecordAgentTurn`): no model is called, nothing is read
from PostgreSQL, and the same log always gives the same answer.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from commands import conversation as conv
from events.catalog import EVENT_REGISTRY
from events.conversation import (
    CONVERSATION_EVENTS,
    AgentReplied,
    AgentTurnDiscarded,
    InboundMessageReceived,
    OutboundMessageRequested,
)
from events.registry import UnknownType, UnsupportedVersion
from events.tenant import AgentConfigured, AgentSettings
from streams.replay import Fields, parse_instant, recorded_instant

LAST_MESSAGES: Final = 10


@dataclass(frozen=True, slots=True)
class AsOf:
    """A point in a tenant's history: every event up to a sequence number, or every event
    before the first one recorded after an instant (chain order, like `Selection`)."""

    text: str
    seq: int | None = None
    instant: datetime | None = None

    @classmethod
    def parse(cls, text: str) -> AsOf:
        """`SEQ` (a positive integer) or an RFC 3339 instant / date; else ValueError."""
        if text.isdigit():
            if int(text) < 1:
                raise ValueError("a sequence number starts at 1")
            return cls(text, seq=int(text))
        return cls(text, instant=parse_instant(text))

    def includes(self, fields: Fields) -> bool:
        if self.seq is not None:
            return int(fields["tenant_seq"]) <= self.seq
        assert self.instant is not None
        instant = recorded_instant(fields["recorded_at"])
        # A damaged timestamp does not end the history (the chain check reports the event).
        return instant is None or instant <= self.instant


@dataclass(slots=True)
class ConversationAsOf:
    """Folds a tenant's events (as the replay emits them, in chain order) up to `as_of`."""

    conversation_id: str
    as_of: AsOf
    last: int = LAST_MESSAGES
    state: conv.Conversation = field(init=False)
    agent: tuple[Fields, AgentSettings] | None = None
    messages: deque[dict[str, Any]] = field(init=False)
    last_turn: dict[str, Any] | None = None
    position: Fields | None = None
    folded: int = 0
    unfolded: list[str] = field(default_factory=list)
    done: bool = False

    def __post_init__(self) -> None:
        self.state = conv.Conversation(self.conversation_id)
        self.messages = deque(maxlen=self.last)

    @property
    def stream(self) -> str:
        return f"conversation:{self.conversation_id}"

    def fold(self, fields: Fields) -> None:
        if self.done or not self.as_of.includes(fields):
            self.done = True
            return
        self.position = fields
        ours = fields["stream"] == self.stream
        if not ours and fields["type"] != AgentConfigured.model_fields["type"].default:
            return
        try:
            event = EVENT_REGISTRY.decode(fields["type"], fields["schema_version"],
                                          fields["payload"])  # fmt: skip
        except (UnknownType, UnsupportedVersion, ValueError, KeyError) as exc:
            self.unfolded.append(f"seq {fields['tenant_seq']}: {type(exc).__name__}")
            return
        self.folded += 1
        if isinstance(event, AgentConfigured):
            self.agent = (fields, event.settings)
        elif ours and isinstance(event, CONVERSATION_EVENTS):
            self.state = conv.evolve(self.state, event)
            self._remember(fields, event)

    def _remember(self, fields: Fields, event: object) -> None:
        at = {"tenant_seq": fields["tenant_seq"], "recorded_at": fields["recorded_at"]}
        match event:
            case InboundMessageReceived():
                self.messages.append({**at, "direction": "inbound", "author": "contact",
                                      "message_id": event.message_sid, "body": event.body,
                                      "media": len(event.media)})  # fmt: skip
            case OutboundMessageRequested():
                self.messages.append({**at, "direction": "outbound", "author": event.author,
                                      "message_id": event.outbound_id, "body": event.body,
                                      "content_sid": event.content_sid,
                                      "fallback_for": event.fallback_for})  # fmt: skip
            case AgentReplied():
                self.last_turn = {**at, "outcome": "replied", **event.payload()}
            case AgentTurnDiscarded():
                self.last_turn = {**at, "outcome": "discarded", **event.payload()}
            case _:
                pass

    def report(self) -> dict[str, Any]:
        state, where = self.state, self.position
        instant = self.as_of.instant
        if instant is None and where is not None:
            instant = recorded_instant(where["recorded_at"])
        window = state.window_open_until
        messages = [{**m, "outcome": self._outcome(m)} if m["direction"] == "outbound" else m
                    for m in self.messages]  # fmt: skip
        return {
            "conversation_id": self.conversation_id,
            "as_of": {
                "requested": self.as_of.text,
                "tenant_seq": where["tenant_seq"] if where else None,
                "recorded_at": where["recorded_at"] if where else None,
            },
            "conversation": {
                "started": state.started,
                "contact": state.contact or None,
                "sender": state.sender or None,
                "state": state.state if state.started else None,
                "opted_out": state.opted_out,
                "window_open_until": window.isoformat() if window else None,
                "window_open": bool(window and instant and window > instant),
                "inbound_messages": len(state.inbound_index),
                "unanswered": sorted(state.inbound_sids - state.answered),
            },
            "last_messages": messages,
            "last_turn": self.last_turn,
            "agent_config": self._agent(),
            "events_folded": self.folded,
            "events_not_folded": self.unfolded,
        }

    def _outcome(self, message: dict[str, Any]) -> str | None:
        send = self.state.sends.get(message["message_id"])
        return send.outcome if send is not None else None

    def _agent(self) -> dict[str, Any] | None:
        if self.agent is None:
            return None  # the platform's defaults: the LLM with a default prompt, or the FAQ agent
        fields, settings = self.agent
        return {"tenant_seq": fields["tenant_seq"], "recorded_at": fields["recorded_at"],
                "settings": settings.model_dump(mode="json")}  # fmt: skip
