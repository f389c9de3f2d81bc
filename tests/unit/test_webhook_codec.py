"""The webhook's hand-written fast paths equal the library/model paths they replace.

`parse_form`, `compute_signature` and `command_record` skip urllib, the twilio SDK and pydantic
because they run for every webhook; each is held here to the slow path's exact result.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from api.signature import compute_signature
from api.twilio_form import (
    MAX_FIELDS,
    FormParams,
    TwilioFormError,
    WebhookCommand,
    command_envelope,
    command_record,
    inbound_command,
    parse_form,
    status_command,
)
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from events.envelope import encode_command

pytestmark = pytest.mark.unit

# Text that exercises every branch of form decoding: separators, plus, percent escapes (valid,
# truncated, not hex, not UTF-8) and non-ASCII characters.
_PIECES = st.sampled_from(
    [
        "&",
        "=",
        "+",
        "%",
        "%2",
        "%41",
        "%C3%A1",
        "%C3",
        "%zz",
        "%26",
        "%3D",
        "a",
        "B",
        "é",
        "😀",
        " ",
    ]
)
_BODIES = st.lists(_PIECES, max_size=24).map("".join)


def _stdlib(body: bytes) -> list[tuple[str, str]]:
    return parse_qsl(
        body.decode(),
        keep_blank_values=True,
        strict_parsing=True,
        errors="strict",
        max_num_fields=MAX_FIELDS,
    )


@given(_BODIES)
@settings(max_examples=500)
def test_parse_form_agrees_with_parse_qsl(text: str) -> None:
    body = text.encode()
    try:
        expected = _stdlib(body)
    except (UnicodeDecodeError, ValueError):
        with pytest.raises(TwilioFormError):
            parse_form(body)
        return
    if any(not name for name, _ in expected):
        with pytest.raises(TwilioFormError):
            parse_form(body)
        return
    grouped: dict[str, list[str]] = {}
    for name, value in expected:
        grouped.setdefault(name, []).append(value)
    assert parse_form(body) == grouped


def test_parse_form_refuses_invalid_utf8_and_too_many_fields() -> None:
    with pytest.raises(TwilioFormError):
        parse_form(b"Body=\xff")
    with pytest.raises(TwilioFormError):
        parse_form(b"Body=%FF")
    with pytest.raises(TwilioFormError):
        parse_form("&".join(f"f{n}=1" for n in range(MAX_FIELDS + 1)).encode())
    assert len(parse_form("&".join(f"f{n}=1" for n in range(MAX_FIELDS)).encode())) == MAX_FIELDS


_NAMES = st.text(st.sampled_from("ABCabc_0é"), min_size=1, max_size=6)
_VALUES = st.text(st.sampled_from("xyz +%&=é0"), max_size=8)
_PARAMS = st.dictionaries(_NAMES, st.lists(_VALUES, min_size=1, max_size=3), max_size=6).map(
    FormParams
)


@given(_PARAMS, st.sampled_from(["https://zap.example.com/v1/x", "http://h:8080/p?q=1"]))
@settings(max_examples=300)
def test_compute_signature_agrees_with_the_twilio_sdk(params: FormParams, url: str) -> None:
    token = "a4f0e1c2b3d4"
    sdk = RequestValidator(token).compute_signature(url, params)
    assert compute_signature(token.encode(), url, params).decode() == sdk


_FIELD_VALUES = st.text(st.sampled_from("abc +:é0"), max_size=6)
_OPTIONAL = {
    "Body": _FIELD_VALUES,
    "ProfileName": _FIELD_VALUES,
    "WaId": _FIELD_VALUES,
    "NumMedia": st.sampled_from(["0", "1", "2"]),
    "MediaUrl0": _FIELD_VALUES,
    "MediaContentType0": _FIELD_VALUES,
    "MediaUrl1": _FIELD_VALUES,
    "Latitude": _FIELD_VALUES,
    "Longitude": _FIELD_VALUES,
    "Address": _FIELD_VALUES,
    "ButtonText": _FIELD_VALUES,
    "ButtonPayload": _FIELD_VALUES,
    "ReferralBody": _FIELD_VALUES,
    "OriginalRepliedMessageSid": _FIELD_VALUES,
    "ErrorCode": _FIELD_VALUES,
    "ChannelStatusMessage": _FIELD_VALUES,
    "Unmodelled": _FIELD_VALUES,
}
_FORMS = st.fixed_dictionaries(
    {
        "MessageSid": st.text(st.sampled_from("SM0123ab"), max_size=70),
        "AccountSid": st.just("AC" + "1" * 32),
        "From": st.sampled_from(["whatsapp:+14017122661", "whatsapp:BR.1a2b3c", ""]),
        "To": st.just("whatsapp:+14155238886"),
        "MessageStatus": st.sampled_from(["sent", "delivered", "read", "failed", "x" * 70]),
    },
    optional=_OPTIONAL,
)
_INSTANTS = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(0)), timezone(timedelta(hours=-3)), timezone(timedelta(hours=5))]
    ),
)
_TENANT = UUID("6f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f")


@pytest.mark.parametrize(
    ("fast", "model"),
    [(inbound_command, ReceiveInboundMessage), (status_command, RecordDeliveryStatus)],
)
@given(fields=_FORMS, issued_at=_INSTANTS)
@settings(max_examples=300)
def test_the_fast_command_is_the_models_command(
    fast: Callable[[FormParams], WebhookCommand],
    model: type[ReceiveInboundMessage | RecordDeliveryStatus],
    fields: dict[str, str],
    issued_at: datetime,
) -> None:
    params = parse_form(urlencode(fields).encode())
    try:
        command = fast(params)
    except TwilioFormError:
        return  # refusals: see test_twilio_form; what is accepted must be a valid command
    validated = model.model_validate(command.payload)
    assert validated.payload() == command.payload
    _, key, value, headers = command_record(_TENANT, command, issued_at)
    assert (key, value, headers) == encode_command(command_envelope(_TENANT, validated, issued_at))


def test_overlong_sids_and_statuses_are_refused_before_any_envelope() -> None:
    base = {"AccountSid": "AC1", "From": "whatsapp:+1", "To": "whatsapp:+2"}
    long_sid = parse_form(urlencode({**base, "MessageSid": "S" * 65}).encode())
    with pytest.raises(TwilioFormError) as caught:
        inbound_command(long_sid)
    assert caught.value.code == "invalid_parameter"
    long_status = parse_form(
        urlencode({**base, "MessageSid": "SM1", "MessageStatus": "x" * 65}).encode()
    )
    with pytest.raises(TwilioFormError) as caught:
        status_command(long_status)
    assert caught.value.code == "invalid_parameter"


def test_command_record_refuses_a_naive_instant() -> None:
    params = parse_form(b"MessageSid=SM1&AccountSid=AC1&From=a&To=b")
    with pytest.raises(ValueError, match="timezone-aware"):
        command_record(_TENANT, inbound_command(params), datetime(2026, 1, 1))
