"""Every command type the decider accepts, with the upcasters for their older versions."""

from __future__ import annotations

from typing import Final

from commands.agent import RecordAgentTurn
from commands.agent_config import ConfigureAgent
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.operator import (
    CloseConversation,
    HandOffToHuman,
    RequestHandoff,
    RequestOutboundMessage,
    ReturnToBot,
)
from commands.send import RecordSendResult
from commands.tenant import RegisterTenant
from events.registry import Message, Registry

COMMAND_REGISTRY: Final[Registry[Message]] = Registry(
    models={
        "RegisterTenant": RegisterTenant,
        "ReceiveInboundMessage": ReceiveInboundMessage,
        "RecordDeliveryStatus": RecordDeliveryStatus,
        "RequestHandoff": RequestHandoff,
        "HandOffToHuman": HandOffToHuman,
        "ReturnToBot": ReturnToBot,
        "CloseConversation": CloseConversation,
        "RequestOutboundMessage": RequestOutboundMessage,
        "RecordAgentTurn": RecordAgentTurn,
        "RecordSendResult": RecordSendResult,
        "ConfigureAgent": ConfigureAgent,
    },
    upcasters={},
)
