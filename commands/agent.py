"""What an agent turn asks the decider to record (the agent runner issues it, issue #4)."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from events.conversation import ToolCall
from events.registry import Message

HANDOFF_TOOL: Final = "handoff_to_human"
CLOSE_TOOL: Final = "close_conversation"


class RecordAgentTurn(Message):
    """One finished turn: what the model was given (by hash), what it did and what it costs.

    The decider records at most one outcome per (conversation, triggering message): a turn run
    again after a crash is refused, so a reply is never sent twice. It discards the turn (with
    an event) when the conversation moved on meanwhile: a human took over, the contact opted
    out, or a newer message arrived (a newer turn answers both).
    """

    type: Literal["RecordAgentTurn"] = "RecordAgentTurn"
    schema_version: Literal[1] = 1
    conversation_id: str
    turn_id: str = Field(min_length=1)
    trigger_message_sid: str = Field(min_length=1)
    agent: Literal["llm", "faq"]
    model: str = Field(min_length=1)
    prompt_hash: str = Field(pattern="^[0-9a-f]{64}$")
    reply: str | None = Field(default=None, min_length=1)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tokens_in: int = Field(default=0, ge=0)
    tokens_out: int = Field(default=0, ge=0)
    latency_ms: int = Field(default=0, ge=0)
    builds_on: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        max_length=20,
        description="Triggering messages of earlier turns whose replies were in this turn's "
        "history before they were decided (the runner's pipelining, ADR 0014): the decider "
        "discards this turn unless each of them was recorded with a reply.",
    )
    fallback_reason: str | None = Field(
        default=None,
        description="Set when the model failed (after its retries) or the token budget ran out: "
        "`reply` is then the tenant's fallback message and the conversation is handed off.",
    )
