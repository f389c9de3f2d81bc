"""The wire format: orjson bytes, Kafka headers, frozen and validated envelopes."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from pydantic import ValidationError

from events.envelope import (
    HEADER_TYPE,
    HEADER_VERSION,
    CommandEnvelope,
    decode_command,
    decode_event,
    encode_command,
    encode_event,
    header,
    trusted,
)
from tests.builders import EPOCH, chain

pytestmark = pytest.mark.unit
TENANT = uuid.UUID("00000000-0000-4000-8000-000000000002")


def test_event_round_trips_byte_for_byte() -> None:
    (event,) = chain(TENANT, 1)
    key, value, headers = encode_event(event)
    assert key == str(TENANT).encode()
    assert decode_event(value) == event
    assert encode_event(decode_event(value))[1] == value
    assert header(headers, HEADER_TYPE) == "CommandRejected"
    assert header(headers, HEADER_VERSION) == "1"


def test_command_round_trips_with_headers() -> None:
    command = CommandEnvelope(
        command_id=uuid.uuid4(),
        tenant_id=TENANT,
        type="ReceiveInboundMessage",
        schema_version=2,
        issued_at=EPOCH,
        correlation_id=uuid.uuid4(),
        idempotency_key="SM123",
        payload={"body": "olá"},
    )
    key, value, headers = encode_command(command)
    assert decode_command(value) == command
    assert header(headers, HEADER_VERSION) == "2"
    assert key == str(TENANT).encode()


def test_envelopes_are_immutable() -> None:
    (event,) = chain(TENANT, 1)
    with pytest.raises(ValidationError):
        event.tenant_seq = 5  # type: ignore[misc]  # proving the model is frozen


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("hash", "abc"),
        ("prev_hash", "Z" * 64),
        ("tenant_seq", 0),
        ("occurred_at", datetime(2026, 1, 1)),
        ("unexpected", 1),
    ],
)
def test_invalid_envelopes_are_refused(field: str, value: object) -> None:
    (event,) = chain(TENANT, 1)
    with pytest.raises(ValidationError):
        type(event).model_validate({**event.model_dump(), field: value})


def test_a_changed_copy_is_encoded_from_its_own_fields() -> None:
    (event,) = chain(TENANT, 1)
    value = encode_event(event)[1]
    changed = decode_event(value).model_copy(update={"payload": {"reason": "changed"}})
    assert decode_event(encode_event(changed)[1]).payload == {"reason": "changed"}
    assert encode_event(decode_event(value).model_copy())[1] == value


def test_trusted_construction_equals_validation() -> None:
    (event,) = chain(TENANT, 1)
    fields = dict(event.__dict__)
    built = trusted(type(event), fields)
    validated = type(event).model_validate(event.model_dump())
    assert built == validated
    assert built.model_dump(mode="json") == validated.model_dump(mode="json")
    assert built.model_fields_set == validated.model_fields_set
    assert encode_event(built)[1] == encode_event(validated)[1]
    with pytest.raises(ValidationError):
        built.tenant_seq = 2  # type: ignore[misc]  # still frozen
