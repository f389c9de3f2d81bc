"""Every event type zapflow writes, with the upcasters for their older versions."""

from __future__ import annotations

from typing import Final

from events.conversation import CONVERSATION_EVENTS
from events.identity import IDENTITY_EVENTS
from events.platform import CommandRejected
from events.registration import DIRECTORY_EVENTS, REGISTRATION_EVENTS
from events.registry import Message, Registry
from events.tenant import TENANT_LIFECYCLE_EVENTS, AgentConfigured, TenantRegistered

_EVENTS: Final[tuple[type[Message], ...]] = (
    CommandRejected,
    TenantRegistered,
    AgentConfigured,
    *CONVERSATION_EVENTS,
    *TENANT_LIFECYCLE_EVENTS,
    *IDENTITY_EVENTS,
    *REGISTRATION_EVENTS,
    *DIRECTORY_EVENTS,
)

EVENT_REGISTRY: Final[Registry[Message]] = Registry(
    models={model.model_fields["type"].default: model for model in _EVENTS},
    upcasters={},
)
