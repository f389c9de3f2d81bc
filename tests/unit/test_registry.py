"""Type registry: decoding current payloads and upcasting old ones, refusing what it can't read."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import ValidationError

from events.catalog import EVENT_REGISTRY
from events.envelope import Payload
from events.platform import CommandRejected
from events.registry import Message, Registry, UnknownType, UnsupportedVersion

pytestmark = pytest.mark.unit


class Greeted(Message):
    type: Literal["Greeted"] = "Greeted"
    schema_version: Literal[3] = 3
    full_name: str
    language: str


def _v1_to_v2(payload: Payload) -> Payload:
    return {"full_name": payload["name"]}


def _v2_to_v3(payload: Payload) -> Payload:
    return {**payload, "language": "pt-BR"}


REGISTRY = Registry[Message](
    models={"Greeted": Greeted}, upcasters={("Greeted", 1): _v1_to_v2, ("Greeted", 2): _v2_to_v3}
)


def test_current_version_decodes_as_is() -> None:
    decoded = REGISTRY.decode("Greeted", 3, {"full_name": "Ana", "language": "es"})
    assert decoded == Greeted(full_name="Ana", language="es")


def test_old_versions_are_upcast_step_by_step() -> None:
    assert REGISTRY.decode("Greeted", 1, {"name": "Ana"}) == Greeted(
        full_name="Ana", language="pt-BR"
    )


def test_unknown_types_and_future_versions_are_refused() -> None:
    with pytest.raises(UnknownType):
        REGISTRY.decode("Waved", 1, {})
    with pytest.raises(UnsupportedVersion):
        REGISTRY.decode("Greeted", 4, {})


def test_a_missing_upcaster_is_an_error_not_a_guess() -> None:
    partial = Registry[Message](models={"Greeted": Greeted}, upcasters={})
    with pytest.raises(UnsupportedVersion, match="no upcaster for Greeted v2"):
        partial.decode("Greeted", 2, {"full_name": "Ana"})


def test_a_registry_refuses_a_model_filed_under_another_name() -> None:
    with pytest.raises(TypeError, match="must default to 'Hello'"):
        Registry[Message](models={"Hello": Greeted}, upcasters={})


def test_payloads_leave_type_and_version_to_the_envelope() -> None:
    event = CommandRejected(command_id="c", command_type="T", reason_code="r", reason="why")
    assert "type" not in event.payload()
    assert EVENT_REGISTRY.decode("CommandRejected", 1, event.payload()) == event
    with pytest.raises(ValidationError):
        EVENT_REGISTRY.decode("CommandRejected", 1, {**event.payload(), "extra": 1})
