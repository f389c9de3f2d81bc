"""A registered tenant's lifecycle: settings, WhatsApp senders, Twilio credentials, suspension.

Issued by the platform admin (the API authorises that); every change is idempotent, so a command
repeated after a crash, or repeating what is already so, records nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final, Literal, assert_never

from pydantic import Field

from commands.errors import Rejected
from commands.tenant import TenantProfile
from events.registry import Message
from events.tenant import (
    SENDER_PATTERN,
    TenantLifecycleEvent,
    TenantReactivated,
    TenantSettingsUpdated,
    TenantSuspended,
    TwilioCredentialsRotated,
    WhatsAppSenderAdded,
    WhatsAppSenderRemoved,
)


class UpdateTenantSettings(Message):
    type: Literal["UpdateTenantSettings"] = "UpdateTenantSettings"
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)


class AddWhatsAppSender(Message):
    type: Literal["AddWhatsAppSender"] = "AddWhatsAppSender"
    schema_version: Literal[1] = 1
    sender: str = Field(pattern=SENDER_PATTERN)


class RemoveWhatsAppSender(Message):
    type: Literal["RemoveWhatsAppSender"] = "RemoveWhatsAppSender"
    schema_version: Literal[1] = 1
    sender: str = Field(pattern=SENDER_PATTERN)


class RotateTwilioCredentials(Message):
    """Replace the Twilio credentials; the API encrypts the token before it becomes a command."""

    type: Literal["RotateTwilioCredentials"] = "RotateTwilioCredentials"
    schema_version: Literal[1] = 1
    twilio_account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token_encrypted: str = Field(min_length=1)


class SuspendTenant(Message):
    type: Literal["SuspendTenant"] = "SuspendTenant"
    schema_version: Literal[1] = 1
    reason: str = Field(min_length=1, max_length=500)


class ReactivateTenant(Message):
    type: Literal["ReactivateTenant"] = "ReactivateTenant"
    schema_version: Literal[1] = 1


type TenantLifecycleCommand = (
    UpdateTenantSettings
    | AddWhatsAppSender
    | RemoveWhatsAppSender
    | RotateTwilioCredentials
    | SuspendTenant
    | ReactivateTenant
)
TENANT_LIFECYCLE_COMMANDS: Final = (
    UpdateTenantSettings,
    AddWhatsAppSender,
    RemoveWhatsAppSender,
    RotateTwilioCredentials,
    SuspendTenant,
    ReactivateTenant,
)


def decide_lifecycle(
    current: TenantProfile | None, command: TenantLifecycleCommand
) -> list[TenantLifecycleEvent]:
    if current is None:
        raise Rejected("unknown_tenant", "the tenant is not registered")
    match command:
        case UpdateTenantSettings(name=name):
            return [] if name == current.name else [TenantSettingsUpdated(name=name)]
        case AddWhatsAppSender(sender=sender):
            return [] if sender in current.senders else [WhatsAppSenderAdded(sender=sender)]
        case RemoveWhatsAppSender(sender=sender):
            if sender not in current.senders:
                raise Rejected("unknown_sender", "the sender does not belong to this tenant")
            if len(current.senders) == 1:
                # TenantRegistered requires a sender: a tenant without one cannot be reached.
                raise Rejected("last_sender", "a tenant keeps at least one WhatsApp sender")
            return [WhatsAppSenderRemoved(sender=sender)]
        case RotateTwilioCredentials():
            # Always recorded: the encrypted token differs on every encryption (a fresh nonce),
            # so "the same credentials" cannot be told apart here; a repeated command is
            # recognised by its id before it reaches this decider.
            return [TwilioCredentialsRotated(**command.payload())]
        case SuspendTenant(reason=reason):
            return [] if current.suspended else [TenantSuspended(reason=reason)]
        case ReactivateTenant():
            return [TenantReactivated()] if current.suspended else []
        case _:
            assert_never(command)


def evolve_lifecycle(current: TenantProfile, event: TenantLifecycleEvent) -> TenantProfile:
    match event:
        case TenantSettingsUpdated(name=name):
            return replace(current, name=name)
        case WhatsAppSenderAdded(sender=sender):
            return replace(current, senders=current.senders | {sender})
        case WhatsAppSenderRemoved(sender=sender):
            return replace(current, senders=current.senders - {sender})
        case TwilioCredentialsRotated(twilio_account_sid=account_sid):
            return replace(current, account_sid=account_sid)
        case TenantSuspended():
            return replace(current, suspended=True)
        case TenantReactivated():
            return replace(current, suspended=False)
        case _:
            assert_never(event)
