"""The tenant aggregate's registration, the profile the decider keeps of every tenant, and what
valid input for a tenant is (the admin API and the CLI check it alike, before anything is sent).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from pydantic import Field

from commands.errors import Rejected
from events.registry import Message
from events.tenant import SENDER_PATTERN, AgentSettings, TenantRegistered

ACCOUNT_SID: Final = re.compile(r"^AC[0-9a-fA-F]{32}$")
SENDER: Final = re.compile(SENDER_PATTERN)
MAX_NAME: Final = 200
MAX_REASON: Final = 500
MAX_SENDERS: Final = 50
MAX_TOKEN: Final = 200


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


class InvalidTenantInput(ValueError):
    """One field of a tenant request is unusable; `shown` is safe to print (never a token)."""

    def __init__(self, field_name: str, shown: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field, self.shown, self.problem = field_name, shown, problem


@dataclass(frozen=True, slots=True)
class NewTenant:
    """A registration request, validated."""

    name: str
    account_sid: str
    auth_token: str = field(repr=False)
    senders: tuple[str, ...]


def tenant_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME or not name.isprintable():
        raise InvalidTenantInput(
            "name", repr(name), f"must be 1 to {MAX_NAME} printable characters"
        )
    return name


def account_sid(sid: str) -> str:
    if not ACCOUNT_SID.match(sid):
        raise InvalidTenantInput(
            "twilio_account_sid", repr(sid), "must be AC followed by 32 hexadecimal digits"
        )
    return sid


def auth_token(token: str) -> str:
    if not token or token != token.strip() or len(token) > MAX_TOKEN or not token.isprintable():
        raise InvalidTenantInput(
            "twilio_auth_token", "***",
            f"must be 1 to {MAX_TOKEN} printable characters, without surrounding whitespace",
        )  # fmt: skip
    return token


def sender(value: str) -> str:
    if not SENDER.match(value):
        raise InvalidTenantInput(
            "sender", repr(value), "must be E.164 (+14155238886) or whatsapp:+14155238886"
        )
    return value


def reason(text: str) -> str:
    text = text.strip()
    if not 1 <= len(text) <= MAX_REASON or "\x00" in text:
        raise InvalidTenantInput("reason", repr(text), f"must be 1 to {MAX_REASON} characters")
    return text


def new_tenant(name: str, sid: str, token: str, senders: Sequence[str]) -> NewTenant:
    """The request, or `InvalidTenantInput` naming the first bad field; repeats collapse."""
    checked = (tenant_name(name), account_sid(sid), auth_token(token))
    if not senders:
        raise InvalidTenantInput("senders", "(none)", "give at least one sender")
    unique = tuple(dict.fromkeys(sender(s) for s in senders))
    if len(unique) > MAX_SENDERS:
        raise InvalidTenantInput("senders", str(len(unique)), f"at most {MAX_SENDERS}")
    return NewTenant(*checked, unique)
