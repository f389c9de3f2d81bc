"""Every event type zapflow writes, with the upcasters for their older versions."""

from __future__ import annotations

from typing import Final

from events.conversation import CONVERSATION_EVENTS
from events.platform import CommandRejected
from events.registry import Message, Registry
from events.tenant import AgentConfigured, TenantRegistered

_EVENTS: Final[tuple[type[Message], ...]] = (
    CommandRejected,
    TenantRegistered,
    AgentConfigured,
    *CONVERSATION_EVENTS,
)

EVENT_REGISTRY: Final[Registry[Message]] = Registry(
    models={model.model_fields["type"].default: model for model in _EVENTS},
    upcasters={},
)
