"""Commands the Twilio webhooks issue (translated from Twilio's form parameters by the API)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from events.conversation import Button, Location, Media
from events.registry import Message


class ReceiveInboundMessage(Message):
    """Record a customer's WhatsApp message. Idempotent by `message_sid`."""

    type: Literal["ReceiveInboundMessage"] = "ReceiveInboundMessage"
    schema_version: Literal[1] = 1
    message_sid: str = Field(min_length=1, max_length=64)
    account_sid: str
    contact: str = Field(min_length=1, description="Twilio `From`: the customer's address.")
    sender: str = Field(min_length=1, description="Twilio `To`: the tenant's sender.")
    body: str = ""
    media: list[Media] = Field(default_factory=list)
    profile_name: str | None = None
    wa_id: str | None = None
    location: Location | None = None
    button: Button | None = None
    referral: dict[str, str] = Field(default_factory=dict)
    replied_to_sid: str | None = None
    extra: dict[str, str | list[str]] = Field(default_factory=dict)


class RecordDeliveryStatus(Message):
    """Record a status callback for an outbound message. Idempotent by (sid, status)."""

    type: Literal["RecordDeliveryStatus"] = "RecordDeliveryStatus"
    schema_version: Literal[1] = 1
    message_sid: str = Field(min_length=1, max_length=64)
    account_sid: str
    status: str = Field(min_length=1, max_length=64, description="Twilio `MessageStatus`, as sent.")
    contact: str = Field(min_length=1, description="Twilio `To`: the customer's address.")
    sender: str = Field(min_length=1, description="Twilio `From`: the tenant's sender.")
    error_code: str | None = None
    error_message: str | None = None
    extra: dict[str, str | list[str]] = Field(default_factory=dict)
