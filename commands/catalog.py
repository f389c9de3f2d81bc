"""Every command type the decider accepts, with the upcasters for their older versions."""

from __future__ import annotations

from typing import Final

from commands.agent import RecordAgentTurn
from commands.agent_config import ConfigureAgent
from commands.api_keys import CreateApiKey, RevokeApiKey
from commands.directory import ReleaseEmail, ReserveEmail
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.memberships import AddMembership, ChangeRole, RemoveMembership
from commands.operator import (
    CloseConversation,
    HandOffToHuman,
    RequestHandoff,
    RequestOutboundMessage,
    ReturnToBot,
)
from commands.registration import (
    CompensateRegistration,
    CompleteRegistration,
    FailRegistration,
    StartRegistration,
)
from commands.send import RecordSendResult
from commands.tenant import RegisterTenant
from commands.tenant_lifecycle import (
    AddWhatsAppSender,
    ReactivateTenant,
    RemoveWhatsAppSender,
    RotateTwilioCredentials,
    SuspendTenant,
    UpdateTenantSettings,
)
from commands.users import (
    ChangePassword,
    CreateUser,
    DisableUser,
    EnableUser,
    IssueInvitation,
    RequestPasswordReset,
    RevokeInvitation,
)
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
        "UpdateTenantSettings": UpdateTenantSettings,
        "AddWhatsAppSender": AddWhatsAppSender,
        "RemoveWhatsAppSender": RemoveWhatsAppSender,
        "RotateTwilioCredentials": RotateTwilioCredentials,
        "SuspendTenant": SuspendTenant,
        "ReactivateTenant": ReactivateTenant,
        "CreateUser": CreateUser,
        "DisableUser": DisableUser,
        "EnableUser": EnableUser,
        "IssueInvitation": IssueInvitation,
        "RevokeInvitation": RevokeInvitation,
        "RequestPasswordReset": RequestPasswordReset,
        "ChangePassword": ChangePassword,
        "AddMembership": AddMembership,
        "RemoveMembership": RemoveMembership,
        "ChangeRole": ChangeRole,
        "CreateApiKey": CreateApiKey,
        "RevokeApiKey": RevokeApiKey,
        "StartRegistration": StartRegistration,
        "CompensateRegistration": CompensateRegistration,
        "CompleteRegistration": CompleteRegistration,
        "FailRegistration": FailRegistration,
        "ReserveEmail": ReserveEmail,
        "ReleaseEmail": ReleaseEmail,
    },
    upcasters={},
)
