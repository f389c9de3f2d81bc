"""The anti-corruption layer for Twilio's webhooks: form parameters in, our commands out (pure).

Parsing is lenient where Twilio is ("Twilio will occasionally add new parameters without
advance notice"): every parameter we do not model is kept in `extra`, never rejected, and
addresses are taken as sent (WhatsApp business-scoped user ids are not E.164).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final
from urllib.parse import parse_qsl
from uuid import UUID, uuid5

from pydantic import ValidationError

from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from events.conversation import Button, Location, Media
from events.envelope import CommandEnvelope

MAX_FIELDS: Final = 1000
_MEDIA_URL: Final = re.compile(r"^MediaUrl(\d{1,3})$")
_BUTTON: Final = {"ButtonPayload": "payload", "ButtonText": "text", "ButtonType": "type"}


class TwilioFormError(ValueError):
    """The request is not a well-formed Twilio webhook (answered with 400)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class FormParams(dict[str, list[str]]):
    """Form parameters, each name with all its values in arrival order.

    `getall` is the multi-value accessor twilio's `RequestValidator` looks for, so signatures
    cover repeated parameters exactly as Twilio computed them.
    """

    def getall(self, name: str) -> list[str]:
        return self[name]


def parse_form(body: bytes) -> FormParams:
    """Parse an `application/x-www-form-urlencoded` body strictly (UTF-8, no stray `&`)."""
    try:
        pairs = parse_qsl(
            body.decode(),
            keep_blank_values=True,
            strict_parsing=True,
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise TwilioFormError("malformed_body", f"not a valid form body: {exc}") from None
    params = FormParams()
    for name, value in pairs:
        if not name:
            raise TwilioFormError("malformed_body", "a form field has an empty name")
        params.setdefault(name, []).append(value)
    return params


class _Reader:
    """Takes modelled parameters out of a form; what is left over becomes `extra`."""

    def __init__(self, params: FormParams) -> None:
        self._params = params
        self._used: set[str] = set()

    def get(self, name: str) -> str | None:
        values = self._params.get(name)
        if values is None:
            return None
        if len(set(values)) > 1:
            raise TwilioFormError("ambiguous_parameter", f"{name} is sent with different values")
        self._used.add(name)
        return values[0]

    def require(self, name: str) -> str:
        value = self.get(name)
        if not value:
            raise TwilioFormError("missing_parameter", f"{name} is required")
        return value

    def has(self, name: str) -> bool:
        return name in self._params

    def names(self) -> list[str]:
        return list(self._params)

    def extra(self) -> dict[str, str | list[str]]:
        return {
            name: values[0] if len(values) == 1 else list(values)
            for name, values in self._params.items()
            if name not in self._used
        }


def _media(form: _Reader) -> list[Media]:
    # NumMedia is advisory: the MediaUrl{N} keys that are present (and not blank) are the media.
    form.get("NumMedia")
    found = sorted(
        (int(m.group(1)), m.group(1)) for n in form.names() if (m := _MEDIA_URL.match(n))
    )
    media = []
    for _, index in found:
        url = form.get(f"MediaUrl{index}")
        if url:
            media.append(Media(url=url, content_type=form.get(f"MediaContentType{index}")))
    return media


def _location(form: _Reader) -> Location | None:
    if not (form.has("Latitude") and form.has("Longitude")):
        return None  # a half location stays in `extra`, as sent
    return Location(
        latitude=form.get("Latitude") or "",
        longitude=form.get("Longitude") or "",
        address=form.get("Address"),
        label=form.get("Label"),
    )


def _button(form: _Reader) -> Button | None:
    fields = {field: form.get(name) for name, field in _BUTTON.items() if form.has(name)}
    return Button.model_validate(fields) if fields else None


def _referral(form: _Reader) -> dict[str, str]:
    found = {name: form.get(name) for name in form.names() if name.startswith("Referral")}
    return {name: value for name, value in found.items() if value is not None}


def inbound_message(params: FormParams) -> ReceiveInboundMessage:
    """`ReceiveInboundMessage` from an incoming-message webhook's parameters."""
    form = _Reader(params)
    try:
        return ReceiveInboundMessage(
            message_sid=form.require("MessageSid"),
            account_sid=form.require("AccountSid"),
            contact=form.require("From"),
            sender=form.require("To"),
            body=form.get("Body") or "",
            media=_media(form),
            profile_name=form.get("ProfileName"),
            wa_id=form.get("WaId"),
            location=_location(form),
            button=_button(form),
            referral=_referral(form),
            replied_to_sid=form.get("OriginalRepliedMessageSid"),
            extra=form.extra(),
        )
    except ValidationError as exc:
        raise TwilioFormError("invalid_parameter", _first_error(exc)) from None


def delivery_status(params: FormParams) -> RecordDeliveryStatus:
    """`RecordDeliveryStatus` from a status callback's parameters (`From` is our sender)."""
    form = _Reader(params)
    try:
        return RecordDeliveryStatus(
            message_sid=form.require("MessageSid"),
            account_sid=form.require("AccountSid"),
            status=form.require("MessageStatus"),
            sender=form.require("From"),
            contact=form.require("To"),
            error_code=form.get("ErrorCode") or None,
            error_message=form.get("ChannelStatusMessage") or None,
            extra=form.extra(),
        )
    except ValidationError as exc:
        raise TwilioFormError("invalid_parameter", _first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}"


def command_envelope(
    tenant_id: UUID, command: ReceiveInboundMessage | RecordDeliveryStatus, issued_at: datetime
) -> CommandEnvelope:
    """The envelope of a webhook's command; a retried webhook yields the same `command_id`."""
    if isinstance(command, RecordDeliveryStatus):
        key = f"{command.message_sid}:{command.status}"  # one callback per (sid, status)
    else:
        key = command.message_sid
    command_id = uuid5(tenant_id, f"{command.type}:{key}")
    return CommandEnvelope(
        command_id=command_id,
        tenant_id=tenant_id,
        type=command.type,
        schema_version=command.schema_version,
        issued_at=issued_at,
        correlation_id=command_id,
        idempotency_key=key,
        payload=command.payload(),
    )


def mask_address(address: str) -> str:
    """An address fit for logs: the channel prefix and the last four characters only."""
    channel, colon, rest = address.rpartition(":")
    plus = "+" if rest.startswith("+") else ""
    digits = rest.removeprefix("+")
    return f"{channel}{colon}{plus}{'*' * max(len(digits) - 4, 0)}{digits[-4:]}"
