"""What the sender asks the decider to record: how one outbound message ended (issue #4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal, Self

from pydantic import Field, model_validator

from events.conversation import BlockReason, OutboundMessageRequested, State
from events.registry import Message
from events.tenant import Template

WINDOW_CLOSED_CODE: Final = "63016"
"""Twilio's code for a free-form WhatsApp message outside the 24-hour window."""


class RecordSendResult(Message):
    """The outcome of one `OutboundMessageRequested`: sent (with Twilio's SIDs), failed (with
    Twilio's code) or blocked by the sender's policy check. At most one outcome per outbound
    message is recorded; the sender's command id is derived from the outbound id, so a result
    sent twice (a crash after sending it) is one command."""

    type: Literal["RecordSendResult"] = "RecordSendResult"
    schema_version: Literal[1] = 1
    conversation_id: str
    outbound_id: str = Field(min_length=1)
    outcome: Literal["sent", "failed", "blocked"]
    message_sids: list[str] = Field(default_factory=list, max_length=1000)
    content_sid: str | None = Field(default=None, pattern=r"^HX[0-9a-fA-F]{32}$")
    error_code: str | None = Field(default=None, max_length=32)
    error_message: str = Field(default="", max_length=1000)
    reason: BlockReason | None = None
    detail: str = Field(default="", max_length=1000)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.outcome == "sent" and not self.message_sids:
            raise ValueError("a sent message has at least one Twilio SID")
        if self.outcome == "failed" and not self.error_code:
            raise ValueError("a failed message has Twilio's error code")
        if self.outcome == "blocked" and self.reason is None:
            raise ValueError("a blocked message has a reason")
        return self


BODY_LIMIT: Final = 1600
"""Twilio's longest `Body` (21617 beyond it); WhatsApp's own limit (4096) is higher."""


@dataclass(frozen=True, slots=True)
class SendPlan:
    """What the sender will ask Twilio for: text parts, or one template."""

    parts: tuple[str, ...] = ()
    content_sid: str | None = None
    content_variables: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Blocked:
    reason: BlockReason
    detail: str


def plan_send(
    request: OutboundMessageRequested,
    *,
    opted_out: bool,
    state: State,
    window_open_until: datetime | None,
    now: datetime,
    window_template: Template | None,
) -> SendPlan | Blocked:
    """The sender's policy check, just before the first call to Twilio (the conversation may
    have changed since the decider allowed the request): opted out → blocked; a bot's message
    after an operator took over → blocked; a free-form message outside the 24-hour window →
    the tenant's window template if it has one, else blocked."""
    if opted_out:
        return Blocked("opted_out", "the contact opted out after the message was requested")
    if request.author == "bot" and state == "human":
        return Blocked("human_took_over", "an operator owns the conversation now")
    if request.content_sid is not None:
        return SendPlan(content_sid=request.content_sid,
                        content_variables=dict(request.content_variables))  # fmt: skip
    if window_open_until is None or now >= window_open_until:
        if window_template is None:
            detail = "the 24-hour window closed and no window_closed template is set"
            return Blocked("outside_service_window", detail)
        return SendPlan(content_sid=window_template.content_sid,
                        content_variables=dict(window_template.variables))  # fmt: skip
    return SendPlan(parts=split_body(request.body or ""))


def split_body(text: str, limit: int = BODY_LIMIT) -> tuple[str, ...]:
    """`text` in parts of at most `limit` characters, cut after a line break or a space where
    one falls in the second half of a part (else mid-word); nothing is dropped or reordered."""
    parts: list[str] = []
    while len(text) > limit:
        cut = max(text.rfind("\n", 0, limit), text.rfind(" ", 0, limit))
        cut = cut + 1 if cut >= limit // 2 else limit
        parts.append(text[:cut])
        text = text[cut:]
    if text or not parts:
        parts.append(text)
    return tuple(parts)
