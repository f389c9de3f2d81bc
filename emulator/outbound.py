"""What a Messages create request asks for, checked the way Twilio checks it before answering.

Only the synchronous rules live here (a missing or malformed parameter is refused with a 400 and
nothing is created). The WhatsApp 24-hour rule is not one of them: Twilio accepts such a message
and fails it later, so that rule belongs to the message's lifecycle.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from emulator import twilio_errors

MAX_BODY: Final = 1600
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# A business-scoped user ID, `whatsapp:US.ABC123`: the form is inferred from Twilio's
# changelog, not from a documented pattern.
_BSUID = re.compile(r"[A-Z]{2}\.[A-Za-z0-9]+")
_GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED: Final = frozenset("\f^{}\\[~]|€")

type Form = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Outbound:
    """A create request that passed the synchronous checks."""

    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str | None
    media_urls: tuple[str, ...]
    content_sid: str | None
    content_variables: str | None
    status_callback: str | None

    @property
    def whatsapp(self) -> bool:
        return self.to.startswith("whatsapp:")

    @property
    def free_form(self) -> bool:
        """Body or media: allowed on WhatsApp only inside the customer-service window."""
        return self.body is not None or bool(self.media_urls)

    def num_segments(self) -> int:
        """1 on WhatsApp; for SMS, GSM-7 (160/153 a segment) or else UCS-2 (70/67)."""
        if self.whatsapp or not self.body:
            return 1
        body = self.body
        if all(c in _GSM7_BASIC or c in _GSM7_EXTENDED for c in body):
            units, single, multi = len(body) + sum(c in _GSM7_EXTENDED for c in body), 160, 153
        else:
            units, single, multi = len(body.encode("utf-16-le")) // 2, 70, 67
        return 1 if units <= single else math.ceil(units / multi)


def valid_address(address: str) -> bool:
    """`+E164`, or `whatsapp:` followed by `+E164` or a business-scoped user ID."""
    channel, colon, rest = address.partition(":")
    if not colon:
        return _E164.fullmatch(address) is not None
    if channel != "whatsapp":
        return False
    return _E164.fullmatch(rest) is not None or _BSUID.fullmatch(rest) is not None


def _valid_callback_url(url: str) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return parts.scheme in {"http", "https"} and bool(host) and "_" not in host


def parse_outbound(form: Form) -> Outbound:
    """The request's parameters, or the `TwilioError` Twilio answers; empty counts as absent."""
    first: dict[str, str] = {}
    for name, value in form:
        if value:
            first.setdefault(name, value)
    media = tuple(value for name, value in form if name == "MediaUrl" and value)
    to = first.get("To")
    if to is None:
        raise twilio_errors.to_required()
    if "From" not in first and "MessagingServiceSid" not in first:
        raise twilio_errors.from_required()
    if not valid_address(to):
        raise twilio_errors.invalid_to(to)
    body = first.get("Body")
    if body is None and not media and "ContentSid" not in first:
        raise twilio_errors.body_required()
    if body is not None and len(body) > MAX_BODY:
        raise twilio_errors.body_too_long()
    callback = first.get("StatusCallback")
    if callback is not None and not _valid_callback_url(callback):
        raise twilio_errors.invalid_status_callback(callback)
    return Outbound(
        to=to,
        from_=first.get("From"),
        messaging_service_sid=first.get("MessagingServiceSid"),
        body=body,
        media_urls=media,
        content_sid=first.get("ContentSid"),
        content_variables=first.get("ContentVariables"),
        status_callback=callback,
    )
