"""Every event type zapflow writes, with the upcasters for their older versions."""

from __future__ import annotations

from typing import Final

from events.conversation import (
    ContactOptedIn,
    ContactOptedOut,
    ConversationClosed,
    ConversationHandedOff,
    ConversationReopened,
    ConversationReturnedToBot,
    ConversationStarted,
    DeliveryStatusChanged,
    HandoffRequested,
    InboundMessageReceived,
    OutboundMessageRequested,
)
from events.platform import CommandRejected
from events.registry import Message, Registry
from events.tenant import TenantRegistered

EVENT_REGISTRY: Final[Registry[Message]] = Registry(
    models={
        "CommandRejected": CommandRejected,
        "TenantRegistered": TenantRegistered,
        "ConversationStarted": ConversationStarted,
        "InboundMessageReceived": InboundMessageReceived,
        "DeliveryStatusChanged": DeliveryStatusChanged,
        "ContactOptedOut": ContactOptedOut,
        "ContactOptedIn": ContactOptedIn,
        "HandoffRequested": HandoffRequested,
        "ConversationHandedOff": ConversationHandedOff,
        "ConversationReturnedToBot": ConversationReturnedToBot,
        "ConversationClosed": ConversationClosed,
        "ConversationReopened": ConversationReopened,
        "OutboundMessageRequested": OutboundMessageRequested,
    },
    upcasters={},
)
