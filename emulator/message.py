"""The Message resource as the emulator keeps it, and its JSON as Twilio's REST API renders it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, Literal

from emulator.twilio_errors import API_VERSION

type Status = Literal[
    "accepted", "queued", "sending", "sent", "delivered", "read", "failed", "undelivered"
]


def rfc2822(moment: datetime) -> str:
    """`Thu, 24 Aug 2023 05:01:45 +0000`, the form of every date in the REST API."""
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0))


def message_uri(account_sid: str, sid: str) -> str:
    return f"/{API_VERSION}/Accounts/{account_sid}/Messages/{sid}.json"


@dataclass(frozen=True, slots=True)
class Transition:
    """A status the message moves to, with the error code of a failure."""

    status: Status
    error_code: int | None = None


@dataclass(slots=True)
class Message:
    """One outbound message. Mutable: its lifecycle moves `status` on (under the store's lock)."""

    sid: str
    account_sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    num_media: int
    num_segments: int
    status: Status
    date_created: datetime
    date_updated: datetime
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None

    @property
    def whatsapp(self) -> bool:
        return self.to.startswith("whatsapp:")

    def resource(self) -> dict[str, object]:
        """Every field of the real resource, in the real API's order; price stays unknown."""
        uri = message_uri(self.account_sid, self.sid)
        return {
            "body": self.body,
            "num_segments": str(self.num_segments),
            "direction": "outbound-api",
            "from": self.from_,
            "to": self.to,
            "date_updated": rfc2822(self.date_updated),
            "price": None,
            "error_message": self.error_message,
            "uri": uri,
            "account_sid": self.account_sid,
            "num_media": str(self.num_media),
            "status": self.status,
            "messaging_service_sid": self.messaging_service_sid,
            "sid": self.sid,
            "date_sent": None if self.date_sent is None else rfc2822(self.date_sent),
            "date_created": rfc2822(self.date_created),
            "error_code": self.error_code,
            "price_unit": "USD",
            "api_version": API_VERSION,
            "subresource_uris": {"media": uri.removesuffix(".json") + "/Media.json"},
        }


@dataclass(frozen=True, slots=True)
class Received:
    """An accepted create request as it arrived: every parameter, the headers minus credentials."""

    sid: str
    account_sid: str
    params: dict[str, list[str]]
    headers: dict[str, str]
    received_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "account_sid": self.account_sid,
            "params": self.params,
            "headers": self.headers,
            "received_at": self.received_at.isoformat(),
        }
