"""Every event type zapflow writes, with the upcasters for their older versions."""

from __future__ import annotations

from typing import Final

from events.platform import CommandRejected
from events.registry import Message, Registry

EVENT_REGISTRY: Final[Registry[Message]] = Registry(
    models={
        "CommandRejected": CommandRejected,
    },
    upcasters={},
)
