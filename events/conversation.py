"""Events of one conversation ("conversation:<id>"): one per (tenant, contact address)."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from events.registry import Message

type Status = Literal["queued", "sending", "sent", "delivered", "read", "failed", "undelivered"]
type State = Literal["bot", "handoff_requested", "human", "closed"]
type Author = Literal["bot", "human"]


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Media(_Part):
    url: str
    content_type: str | None = None


class Location(_Part):
    latitude: str
    longitude: str
    address: str | None = None
    label: str | None = None


class Button(_Part):
    payload: str | None = None
    text: str | None = None
    type: str | None = None


class ConversationStarted(Message):
    type: Literal["ConversationStarted"] = "ConversationStarted"
    schema_version: Literal[1] = 1
    conversation_id: str
    contact: str = Field(description="The customer's address, e.g. whatsapp:+5511… or a BSUID.")
    sender: str = Field(description="The tenant's WhatsApp sender the customer wrote to.")


class InboundMessageReceived(Message):
    """A customer's message, recorded exactly once per Twilio MessageSid."""

    type: Literal["InboundMessageReceived"] = "InboundMessageReceived"
    schema_version: Literal[1] = 1
    conversation_id: str
    message_sid: str
    contact: str
    sender: str
    body: str
    media: list[Media] = Field(default_factory=list)
    profile_name: str | None = None
    wa_id: str | None = None
    location: Location | None = None
    button: Button | None = None
    referral: dict[str, str] = Field(default_factory=dict)
    replied_to_sid: str | None = None
    extra: dict[str, str | list[str]] = Field(
        default_factory=dict, description="Parameters Twilio sent that we do not model (kept)."
    )
    received_at: AwareDatetime
    window_open_until: AwareDatetime = Field(description="WhatsApp's 24-hour service window.")


class DeliveryStatusChanged(Message):
    """An outbound message's status moved forward (never backward)."""

    type: Literal["DeliveryStatusChanged"] = "DeliveryStatusChanged"
    schema_version: Literal[1] = 1
    conversation_id: str
    message_sid: str
    status: Status
    previous_status: Status | None
    error_code: str | None = None
    error_message: str | None = None
    outbound_id: str | None = Field(
        default=None,
        description="Our outbound message, when the sender's result naming this SID came first.",
    )


class ContactOptedOut(Message):
    type: Literal["ContactOptedOut"] = "ContactOptedOut"
    schema_version: Literal[1] = 1
    conversation_id: str
    keyword: str
    message_sid: str


class ContactOptedIn(Message):
    type: Literal["ContactOptedIn"] = "ContactOptedIn"
    schema_version: Literal[1] = 1
    conversation_id: str
    keyword: str
    message_sid: str


class HandoffRequested(Message):
    type: Literal["HandoffRequested"] = "HandoffRequested"
    schema_version: Literal[1] = 1
    conversation_id: str
    reason: str
    requested_by: str


class ConversationHandedOff(Message):
    """A human operator owns the conversation; the bot must not send."""

    type: Literal["ConversationHandedOff"] = "ConversationHandedOff"
    schema_version: Literal[1] = 1
    conversation_id: str
    operator: str
    reason: str


class ConversationReturnedToBot(Message):
    type: Literal["ConversationReturnedToBot"] = "ConversationReturnedToBot"
    schema_version: Literal[1] = 1
    conversation_id: str
    operator: str


class ConversationClosed(Message):
    type: Literal["ConversationClosed"] = "ConversationClosed"
    schema_version: Literal[1] = 1
    conversation_id: str
    reason: str
    closed_by: str


class ConversationReopened(Message):
    """A closed conversation got a new inbound message: it is the bot's again (ADR 0007)."""

    type: Literal["ConversationReopened"] = "ConversationReopened"
    schema_version: Literal[1] = 1
    conversation_id: str
    message_sid: str


class OutboundMessageRequested(Message):
    """The send policy allowed a message; the sender turns it into one Twilio API call."""

    type: Literal["OutboundMessageRequested"] = "OutboundMessageRequested"
    schema_version: Literal[1] = 1
    conversation_id: str
    outbound_id: str
    author: Author
    contact: str
    sender: str
    body: str | None = None
    content_sid: str | None = None
    content_variables: dict[str, str] = Field(default_factory=dict)
    fallback_for: str | None = Field(
        default=None,
        description="The outbound message this template replaces (it failed with 63016: the "
        "24-hour window had closed). A fallback gets no fallback of its own.",
    )


type BlockReason = Literal["opted_out", "outside_service_window", "human_took_over"]


class OutboundMessageSent(Message):
    """Twilio accepted the message (201): one SID per part, in order (long text is split)."""

    type: Literal["OutboundMessageSent"] = "OutboundMessageSent"
    schema_version: Literal[1] = 1
    conversation_id: str
    outbound_id: str
    message_sids: list[str] = Field(min_length=1)
    content_sid: str | None = Field(
        default=None, description="The template sent instead of the text (window closed)."
    )
    status: Status = Field(
        default="queued",
        description="Where the last part's status stood when recorded (callbacks can come first).",
    )
    error_code: str | None = Field(
        default=None, description="Twilio's code, when a failure callback came first."
    )


class OutboundMessageFailed(Message):
    """Twilio refused the message (or part of it), or retries ran out; nothing more is tried."""

    type: Literal["OutboundMessageFailed"] = "OutboundMessageFailed"
    schema_version: Literal[1] = 1
    conversation_id: str
    outbound_id: str
    error_code: str
    error_message: str = ""
    message_sids: list[str] = Field(
        default_factory=list, description="Parts Twilio accepted before the failure."
    )


class OutboundMessageBlocked(Message):
    """The sender's policy check stopped the message before any call to Twilio."""

    type: Literal["OutboundMessageBlocked"] = "OutboundMessageBlocked"
    schema_version: Literal[1] = 1
    conversation_id: str
    outbound_id: str
    reason: BlockReason
    detail: str = ""


class ToolCall(_Part):
    """A tool the model asked for in a turn, and what came of it."""

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    accepted: bool = Field(description="False: not run (not enabled, or invalid arguments).")
    result: str | None = Field(default=None, description="What the tool returned, or why not.")


class AgentReplied(Message):
    """One agent turn, as the decider accepted it: what the bot did and what it cost. Its reply,
    if any, is the `OutboundMessageRequested` with `outbound_id` that follows it."""

    type: Literal["AgentReplied"] = "AgentReplied"
    schema_version: Literal[1] = 1
    conversation_id: str
    turn_id: str
    trigger_message_sid: str = Field(description="The inbound message that started the turn.")
    agent: Literal["llm", "faq"]
    model: str
    prompt_hash: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 of the prompt sent.")
    reply: str | None = None
    outbound_id: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tokens_in: int = Field(ge=0)
    tokens_out: int = Field(ge=0)
    latency_ms: int = Field(ge=0)


class AgentTurnDiscarded(Message):
    """An agent turn that came back too late: nothing of it is sent or done."""

    type: Literal["AgentTurnDiscarded"] = "AgentTurnDiscarded"
    schema_version: Literal[1] = 1
    conversation_id: str
    turn_id: str
    trigger_message_sid: str
    reason: Literal[
        "not_bot",
        "opted_out",
        "superseded",
        "outside_service_window",
        "tenant_suspended",
        "built_on_discarded",
    ]
    detail: str = ""


type ConversationEvent = (
    ConversationStarted
    | InboundMessageReceived
    | DeliveryStatusChanged
    | ContactOptedOut
    | ContactOptedIn
    | HandoffRequested
    | ConversationHandedOff
    | ConversationReturnedToBot
    | ConversationClosed
    | ConversationReopened
    | OutboundMessageRequested
    | OutboundMessageSent
    | OutboundMessageFailed
    | OutboundMessageBlocked
    | AgentReplied
    | AgentTurnDiscarded
)
CONVERSATION_EVENTS: Final = (
    ConversationStarted,
    InboundMessageReceived,
    DeliveryStatusChanged,
    ContactOptedOut,
    ContactOptedIn,
    HandoffRequested,
    ConversationHandedOff,
    ConversationReturnedToBot,
    ConversationClosed,
    ConversationReopened,
    OutboundMessageRequested,
    OutboundMessageSent,
    OutboundMessageFailed,
    OutboundMessageBlocked,
    AgentReplied,
    AgentTurnDiscarded,
)
"""`ConversationEvent` as a tuple, for `isinstance` and for the event registry."""
