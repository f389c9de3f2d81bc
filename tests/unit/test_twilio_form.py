"""Twilio's webhook form → our commands: every parameter family, leniency, refusals."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from urllib.parse import urlencode

import pytest

from api.twilio_form import (
    FormParams,
    TwilioFormError,
    command_envelope,
    delivery_status,
    inbound_message,
    mask_address,
    parse_form,
)
from events.conversation import Button, Location, Media

pytestmark = pytest.mark.unit

ACCOUNT = "AC" + "a" * 32


def form(**fields: str) -> FormParams:
    return parse_form(urlencode(fields).encode())


def inbound(**fields: str) -> FormParams:
    base = {
        "MessageSid": "SM" + "1" * 32,
        "AccountSid": ACCOUNT,
        "From": "whatsapp:+14017122661",
        "To": "whatsapp:+14155238886",
    }
    return form(**(base | fields))


def test_the_core_parameters_of_a_text_message() -> None:
    command = inbound(Body="Olá, tudo bem?", ProfileName="Ana", WaId="14017122661")
    message = inbound_message(command)
    assert (message.message_sid, message.account_sid) == ("SM" + "1" * 32, ACCOUNT)
    assert (message.contact, message.sender) == ("whatsapp:+14017122661", "whatsapp:+14155238886")
    assert (message.body, message.profile_name, message.wa_id) == (
        "Olá, tudo bem?",
        "Ana",
        "14017122661",
    )
    assert message.media == []
    assert message.location is None
    assert message.button is None
    assert message.extra == {}


def test_media_come_from_the_media_url_keys_present_in_index_order() -> None:
    message = inbound_message(
        inbound(
            NumMedia="3",  # one more than sent: the keys present win
            MediaUrl1="https://api.twilio.com/m/ME2",
            MediaContentType1="application/pdf",
            MediaUrl0="https://api.twilio.com/m/ME1",
            MediaContentType0="image/jpeg",
            Body="",
        )
    )
    assert message.media == [
        Media(url="https://api.twilio.com/m/ME1", content_type="image/jpeg"),
        Media(url="https://api.twilio.com/m/ME2", content_type="application/pdf"),
    ]
    assert message.body == ""
    assert message.extra == {}


def test_location_button_referral_and_reply() -> None:
    message = inbound_message(
        inbound(
            Latitude="-23.5505",
            Longitude="-46.6333",
            Address="Av. Paulista",
            Label="Escritório",
            ButtonPayload="yes-1",
            ButtonText="Sim",
            ButtonType="REPLY",
            ReferralBody="Promo",
            ReferralSourceUrl="https://fb.me/ad",
            ReferralCtwaClid="clid",
            OriginalRepliedMessageSid="SM" + "9" * 32,
            OriginalRepliedMessageSender="whatsapp:+14155238886",
        )
    )
    assert message.location == Location(
        latitude="-23.5505", longitude="-46.6333", address="Av. Paulista", label="Escritório"
    )
    assert message.button == Button(payload="yes-1", text="Sim", type="REPLY")
    assert message.referral == {
        "ReferralBody": "Promo",
        "ReferralSourceUrl": "https://fb.me/ad",
        "ReferralCtwaClid": "clid",
    }
    assert message.replied_to_sid == "SM" + "9" * 32
    assert message.extra == {"OriginalRepliedMessageSender": "whatsapp:+14155238886"}


def test_unknown_and_repeated_parameters_are_kept_in_extra() -> None:
    params = parse_form(
        urlencode(
            [
                ("MessageSid", "SM1"),
                ("AccountSid", ACCOUNT),
                ("From", "whatsapp:+14017122661"),
                ("To", "whatsapp:+14155238886"),
                ("SmsStatus", "received"),
                ("ChannelMetadata", '{"type":"whatsapp"}'),
                ("Latitude", "1.0"),  # no Longitude: not a location, kept as sent
                ("BrandNew", "a"),
                ("BrandNew", "b"),
            ]
        ).encode()
    )
    message = inbound_message(params)
    assert message.location is None
    assert message.extra == {
        "SmsStatus": "received",
        "ChannelMetadata": '{"type":"whatsapp"}',
        "Latitude": "1.0",
        "BrandNew": ["a", "b"],
    }


def test_business_scoped_user_ids_are_accepted_as_sent() -> None:
    message = inbound_message(inbound(From="whatsapp:US.ABC123XYZ"))
    assert message.contact == "whatsapp:US.ABC123XYZ"
    assert mask_address("whatsapp:US.ABC123XYZ") == "whatsapp:********3XYZ"
    assert mask_address("whatsapp:+14017122661") == "whatsapp:+*******2661"


def test_status_callback() -> None:
    status = delivery_status(
        form(
            MessageSid="SM" + "2" * 32,
            AccountSid=ACCOUNT,
            From="whatsapp:+14155238886",
            To="whatsapp:+14017122661",
            MessageStatus="undelivered",
            ErrorCode="63016",
            ChannelStatusMessage="outside the window",
            EventType="UNDELIVERED",
        )
    )
    assert (status.status, status.error_code, status.error_message) == (
        "undelivered",
        "63016",
        "outside the window",
    )
    assert (status.sender, status.contact) == ("whatsapp:+14155238886", "whatsapp:+14017122661")
    assert status.extra == {"EventType": "UNDELIVERED"}


@pytest.mark.parametrize(
    "body", [b"MessageSid=SM1&orphan", b"a=1&&b=2", b"a=%ff", b"=nameless", b"\xff=1"]
)
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(TwilioFormError) as caught:
        parse_form(body)
    assert caught.value.code == "malformed_body"


@pytest.mark.parametrize("missing", ["MessageSid", "AccountSid", "From", "To"])
def test_a_missing_required_parameter_is_refused(missing: str) -> None:
    params = inbound()
    del params[missing]
    with pytest.raises(TwilioFormError, match=missing) as caught:
        inbound_message(params)
    assert caught.value.code == "missing_parameter"


def test_a_status_callback_without_a_status_is_refused() -> None:
    params = inbound()
    with pytest.raises(TwilioFormError, match="MessageStatus"):
        delivery_status(params)


def test_conflicting_values_of_a_modelled_parameter_are_refused() -> None:
    params = inbound()
    params["To"].append("whatsapp:+15550000000")
    with pytest.raises(TwilioFormError) as caught:
        inbound_message(params)
    assert caught.value.code == "ambiguous_parameter"


def test_command_ids_are_derived_so_retries_are_the_same_command() -> None:
    tenant = uuid.uuid4()
    at = datetime(2026, 11, 1, tzinfo=UTC)
    first = command_envelope(tenant, inbound_message(inbound()), at)
    again = command_envelope(tenant, inbound_message(inbound()), datetime.now(UTC))
    assert first.command_id == again.command_id == first.correlation_id
    assert first.idempotency_key == "SM" + "1" * 32
    status = dict(AccountSid=ACCOUNT, From="whatsapp:+1415", To="whatsapp:+1401", MessageSid="SM3")
    sent = command_envelope(tenant, delivery_status(form(**status, MessageStatus="sent")), at)
    read = command_envelope(tenant, delivery_status(form(**status, MessageStatus="read")), at)
    assert sent.command_id != read.command_id
    assert command_envelope(uuid.uuid4(), inbound_message(inbound()), at).command_id != (
        first.command_id
    )
