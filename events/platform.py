"""Events the platform records about command handling itself, whatever the aggregate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.registry import Message


class CommandRejected(Message):
    """A command broke a business rule; the rejection is a fact, never silence."""

    type: Literal["CommandRejected"] = "CommandRejected"
    schema_version: Literal[1] = 1
    command_id: str
    command_type: str
    reason_code: str = Field(min_length=1, description="Stable, machine-readable reason.")
    reason: str


type PlatformEvent = CommandRejected
