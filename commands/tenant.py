"""The tenant aggregate's registration, and the profile the decider keeps of every tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from commands.errors import Rejected
from events.registry import Message
from events.tenant import AgentSettings, TenantRegistered


class RegisterTenant(Message):
    type: Literal["RegisterTenant"] = "RegisterTenant"
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)
    twilio_account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token_encrypted: str = Field(min_length=1)
    senders: list[str] = Field(min_length=1)
    api_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class TenantProfile:
    name: str
    account_sid: str
    senders: frozenset[str]
    agent: AgentSettings | None = None
    suspended: bool = False


def decide_registration(current: TenantProfile | None, command: RegisterTenant) -> TenantRegistered:
    if current is not None:
        raise Rejected("tenant_exists", f"tenant is already registered as {current.name!r}")
    return TenantRegistered(**command.payload())


def evolve_registration(event: TenantRegistered) -> TenantProfile:
    return TenantProfile(event.name, event.twilio_account_sid, frozenset(event.senders))
