"""The anti-corruption layer for Twilio's webhooks: form parameters in, our commands out (pure).

Parsing is lenient where Twilio is ("Twilio will occasionally add new parameters without
advance notice"): every parameter we do not model is kept in `extra`, never rejected, and
addresses are taken as sent (WhatsApp business-scoped user ids are not E.164).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote_to_bytes
from uuid import UUID, uuid5

from pydantic import ValidationError

from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from events.envelope import CommandEnvelope, KafkaHeaders, encode_command_fields

MAX_FIELDS: Final = 1000
MAX_SID_LENGTH: Final = 64
MAX_STATUS_LENGTH: Final = 64
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
    """Parse an `application/x-www-form-urlencoded` body strictly (UTF-8, no stray `&`).

    The result is what `urllib.parse.parse_qsl(strict_parsing=True, keep_blank_values=True,
    errors="strict")` returns (a property test holds the two together), at a third of its cost:
    this runs for every webhook, and most fields need no unquoting at all.
    """
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise TwilioFormError("malformed_body", f"not a valid form body: {exc}") from None
    params = FormParams()
    if not text:
        return params
    fields = text.split("&")
    if len(fields) > MAX_FIELDS:
        raise TwilioFormError("malformed_body", f"more than {MAX_FIELDS} form fields")
    for field in fields:
        name, equals, value = field.partition("=")
        if not equals:
            raise TwilioFormError("malformed_body", f"not a valid form body: bad field {field!r}")
        if not name:
            raise TwilioFormError("malformed_body", "a form field has an empty name")
        try:
            name, value = _unquote(name), _unquote(value)
        except UnicodeDecodeError as exc:
            raise TwilioFormError("malformed_body", f"not a valid form body: {exc}") from None
        params.setdefault(name, []).append(value)
    return params


def _unquote(text: str) -> str:
    if "+" in text:
        text = text.replace("+", " ")
    return unquote_to_bytes(text).decode() if "%" in text else text


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


type Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class WebhookCommand:
    """A webhook's command as it travels: its type and JSON-mode payload, plus what is checked.

    Built from the form with plain dicts, not pydantic models: this runs for every webhook. The
    payload is exactly `ReceiveInboundMessage(...).payload()` (or `RecordDeliveryStatus`'s); a
    property test holds the two together, and `inbound_message`/`delivery_status` validate it.
    """

    type: str
    schema_version: int
    idempotency_key: str
    """One record per key: the MessageSid, or MessageSid:status for a status callback."""
    account_sid: str
    sender: str
    contact: str
    message_sid: str
    payload: Json


def _sid(form: _Reader) -> str:
    sid = form.require("MessageSid")
    if len(sid) > MAX_SID_LENGTH:
        raise TwilioFormError(
            "invalid_parameter", f"MessageSid is longer than {MAX_SID_LENGTH} characters"
        )
    return sid


def _media(form: _Reader) -> list[Json]:
    # NumMedia is advisory: the MediaUrl{N} keys that are present (and not blank) are the media.
    form.get("NumMedia")
    found = sorted(
        (int(m.group(1)), m.group(1)) for n in form.names() if (m := _MEDIA_URL.match(n))
    )
    media = []
    for _, index in found:
        url = form.get(f"MediaUrl{index}")
        if url:
            media.append({"url": url, "content_type": form.get(f"MediaContentType{index}")})
    return media


def _location(form: _Reader) -> Json | None:
    if not (form.has("Latitude") and form.has("Longitude")):
        return None  # a half location stays in `extra`, as sent
    return {
        "latitude": form.get("Latitude") or "",
        "longitude": form.get("Longitude") or "",
        "address": form.get("Address"),
        "label": form.get("Label"),
    }


def _button(form: _Reader) -> Json | None:
    if not any(form.has(name) for name in _BUTTON):
        return None
    return {field: form.get(name) for name, field in _BUTTON.items()}


def _referral(form: _Reader) -> dict[str, str]:
    found = {name: form.get(name) for name in form.names() if name.startswith("Referral")}
    return {name: value for name, value in found.items() if value is not None}


def inbound_command(params: FormParams) -> WebhookCommand:
    """The `ReceiveInboundMessage` of an incoming-message webhook."""
    form = _Reader(params)
    sid, account, contact, sender = (
        _sid(form), form.require("AccountSid"), form.require("From"), form.require("To")
    )  # fmt: skip
    payload: Json = {
        "message_sid": sid,
        "account_sid": account,
        "contact": contact,
        "sender": sender,
        "body": form.get("Body") or "",
        "media": _media(form),
        "profile_name": form.get("ProfileName"),
        "wa_id": form.get("WaId"),
        "location": _location(form),
        "button": _button(form),
        "referral": _referral(form),
        "replied_to_sid": form.get("OriginalRepliedMessageSid"),
    }
    payload["extra"] = form.extra()
    return WebhookCommand("ReceiveInboundMessage", 1, sid, account, sender, contact, sid, payload)


def status_command(params: FormParams) -> WebhookCommand:
    """The `RecordDeliveryStatus` of a status callback (`From` is our sender)."""
    form = _Reader(params)
    sid, account, status = _sid(form), form.require("AccountSid"), form.require("MessageStatus")
    if len(status) > MAX_STATUS_LENGTH:
        raise TwilioFormError(
            "invalid_parameter", f"MessageStatus is longer than {MAX_STATUS_LENGTH} characters"
        )
    sender, contact = form.require("From"), form.require("To")
    payload: Json = {
        "message_sid": sid,
        "account_sid": account,
        "status": status,
        "sender": sender,
        "contact": contact,
        "error_code": form.get("ErrorCode") or None,
        "error_message": form.get("ChannelStatusMessage") or None,
    }
    payload["extra"] = form.extra()
    # One record per (sid, status): Twilio sends each status once, and retries repeat it.
    return WebhookCommand(
        "RecordDeliveryStatus", 1, f"{sid}:{status}", account, sender, contact, sid, payload
    )


def inbound_message(params: FormParams) -> ReceiveInboundMessage:
    """`ReceiveInboundMessage` from an incoming-message webhook's parameters."""
    command = inbound_command(params)
    try:
        return ReceiveInboundMessage.model_validate(command.payload)
    except ValidationError as exc:
        raise TwilioFormError("invalid_parameter", _first_error(exc)) from None


def delivery_status(params: FormParams) -> RecordDeliveryStatus:
    """`RecordDeliveryStatus` from a status callback's parameters."""
    command = status_command(params)
    try:
        return RecordDeliveryStatus.model_validate(command.payload)
    except ValidationError as exc:
        raise TwilioFormError("invalid_parameter", _first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}"


def _envelope_fields(
    tenant_id: UUID, command_type: str, schema_version: int, key: str, issued_at: datetime
) -> dict[str, Any]:
    """A webhook's envelope fields but the payload; a retried webhook yields the same id."""
    command_id = uuid5(tenant_id, f"{command_type}:{key}")
    return {
        "command_id": command_id,
        "tenant_id": tenant_id,
        "type": command_type,
        "schema_version": schema_version,
        "issued_at": issued_at,
        "correlation_id": command_id,
        "idempotency_key": key,
    }


def command_record(
    tenant_id: UUID, command: WebhookCommand, issued_at: datetime
) -> tuple[UUID, bytes, bytes, KafkaHeaders]:
    """Command id, key, value and headers of the webhook's record in `zapflow.commands`.

    The bytes are `events.envelope.encode_command(command_envelope(...))`'s, written without
    building the envelope (a unit test holds the two equal).
    """
    fields = _envelope_fields(
        tenant_id, command.type, command.schema_version, command.idempotency_key, issued_at
    )
    key, value, headers = encode_command_fields(**fields, payload=command.payload)
    return fields["command_id"], key, value, headers


def command_envelope(
    tenant_id: UUID, command: ReceiveInboundMessage | RecordDeliveryStatus, issued_at: datetime
) -> CommandEnvelope:
    """The envelope of a webhook's command; a retried webhook yields the same `command_id`."""
    if isinstance(command, RecordDeliveryStatus):
        key = f"{command.message_sid}:{command.status}"  # one callback per (sid, status)
    else:
        key = command.message_sid
    fields = _envelope_fields(tenant_id, command.type, command.schema_version, key, issued_at)
    return CommandEnvelope(**fields, payload=command.payload())


def mask_address(address: str) -> str:
    """An address fit for logs: the channel prefix and the last four characters only."""
    channel, colon, rest = address.rpartition(":")
    plus = "+" if rest.startswith("+") else ""
    digits = rest.removeprefix("+")
    return f"{channel}{colon}{plus}{'*' * max(len(digits) - 4, 0)}{digits[-4:]}"
