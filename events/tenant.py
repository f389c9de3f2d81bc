"""Events of a tenant's own stream ("tenant:<id>"): registration and its credentials."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.registry import Message


class TenantRegistered(Message):
    """A tenant exists. Its Twilio auth token is stored only encrypted, its API key only hashed."""

    type: Literal["TenantRegistered"] = "TenantRegistered"
    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=200)
    twilio_account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    twilio_auth_token_encrypted: str = Field(description="AES-GCM, base64; key from settings.")
    senders: list[str] = Field(min_length=1, description='e.g. "whatsapp:+14155238886"')
    api_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


type TenantEvent = TenantRegistered
