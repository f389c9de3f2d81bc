"""Commands that change who owns a conversation, or ask to send in it (operators and the bot)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from events.conversation import Author
from events.registry import Message


class RequestHandoff(Message):
    """The bot (or a rule) asks for a human; the conversation waits in `handoff_requested`."""

    type: Literal["RequestHandoff"] = "RequestHandoff"
    schema_version: Literal[1] = 1
    conversation_id: str
    reason: str = Field(min_length=1, max_length=500)
    requested_by: str = "bot"


class HandOffToHuman(Message):
    """An operator takes the conversation over."""

    type: Literal["HandOffToHuman"] = "HandOffToHuman"
    schema_version: Literal[1] = 1
    conversation_id: str
    operator: str = Field(min_length=1)
    reason: str = ""


class ReturnToBot(Message):
    type: Literal["ReturnToBot"] = "ReturnToBot"
    schema_version: Literal[1] = 1
    conversation_id: str
    operator: str = Field(min_length=1)


class CloseConversation(Message):
    type: Literal["CloseConversation"] = "CloseConversation"
    schema_version: Literal[1] = 1
    conversation_id: str
    reason: str = ""
    closed_by: str = Field(min_length=1)


class RequestOutboundMessage(Message):
    """Ask to send one message; the send policy decides (`commands.policy`)."""

    type: Literal["RequestOutboundMessage"] = "RequestOutboundMessage"
    schema_version: Literal[1] = 1
    conversation_id: str
    author: Author
    body: str | None = Field(default=None, max_length=1600)
    content_sid: str | None = Field(default=None, pattern=r"^HX[0-9a-fA-F]{32}$")
    content_variables: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something_to_send(self) -> RequestOutboundMessage:
        if not self.body and not self.content_sid:
            raise ValueError("a body or a content_sid (approved template) is required")
        return self
