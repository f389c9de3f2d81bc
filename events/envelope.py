"""Event and command envelopes and their one wire format (orjson bytes plus Kafka headers)."""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, Final, Self, override
from uuid import UUID

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

HASH_HEX_LENGTH: Final = 64


# A pattern, not a Python validator: pydantic-core checks it in Rust, and every event read from
# the log has two of these (a Python loop over 64 characters was a tenth of the projector's CPU).
type Sha256Hex = Annotated[str, StringConstraints(pattern=f"^[0-9a-f]{{{HASH_HEX_LENGTH}}}$")]
type Payload = dict[str, Any]
type KafkaHeaders = list[tuple[str, bytes]]

HEADER_TYPE: Final = "zf-type"
HEADER_VERSION: Final = "zf-version"
HEADER_ID: Final = "zf-id"
HEADER_KIND: Final = "zf-kind"
HEADER_TENANT_SEQ: Final = "zf-tenant-seq"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EventEnvelope(_Frozen):
    """One immutable fact in `zapflow.events`; `hash` seals every other field (see `chain`)."""

    event_id: UUID
    type: str = Field(min_length=1)
    schema_version: int = Field(ge=1)
    tenant_id: UUID
    tenant_seq: int = Field(ge=1)
    stream: str = Field(min_length=1, description='e.g. "conversation:<id>", "tenant:<id>"')
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    correlation_id: UUID
    causation_id: UUID = Field(description="The id of the command that produced this event.")
    prev_hash: Sha256Hex
    hash: Sha256Hex
    payload: Payload
    # The record value this envelope was read from or sealed into, so re-encoding is free and
    # byte-identical. Not a field: not compared, not serialised.
    _wire: bytes | None = PrivateAttr(default=None)

    @override
    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        if update:
            copy._wire = None  # the remembered bytes describe the original, not the copy
        return copy


class EventDraft(_Frozen):
    """An event before it takes its place in the tenant's chain (see `chain.seal`)."""

    event_id: UUID
    type: str = Field(min_length=1)
    schema_version: int = Field(ge=1)
    tenant_id: UUID
    stream: str = Field(min_length=1)
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    correlation_id: UUID
    causation_id: UUID
    payload: Payload


class CommandEnvelope(_Frozen):
    """A request to the decider in `zapflow.commands`; it may be rejected."""

    command_id: UUID
    tenant_id: UUID
    type: str = Field(min_length=1)
    schema_version: int = Field(ge=1)
    issued_at: AwareDatetime
    correlation_id: UUID
    idempotency_key: str | None = Field(default=None, max_length=512)
    payload: Payload


def _json_default(value: object) -> object:
    raise TypeError(f"cannot serialise {type(value).__name__}")


def to_json_bytes(model: BaseModel) -> bytes:
    """The canonical bytes of a model: JSON mode, keys sorted, UTC offsets as written."""
    return orjson.dumps(
        model.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS, default=_json_default
    )


def trusted[M: BaseModel](model: type[M], fields: dict[str, Any]) -> M:
    """An instance of `model` from values that already satisfy it, without validating again.

    For the decider's hot path only (pydantic's `model_construct` costs ~4x more). It sets what
    `model_construct` sets; `test_envelope` proves the result equals a validated instance, so a
    pydantic upgrade that changes these internals fails a test rather than corrupting events.
    """
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", fields)
    object.__setattr__(instance, "__pydantic_fields_set__", set(fields))
    object.__setattr__(instance, "__pydantic_extra__", None)
    defaults = _private_defaults(model)
    object.__setattr__(instance, "__pydantic_private__", None if defaults is None else {**defaults})
    return instance


@functools.cache
def _private_defaults(model: type[BaseModel]) -> dict[str, Any] | None:
    # Cached per class: reading `__private_attributes__` goes through pydantic's metaclass.
    # Callers copy the dict; each instance needs its own.
    private = model.__private_attributes__
    if not private:
        return None
    return {name: attr.get_default() for name, attr in private.items()}


def with_wire_bytes(envelope: EventEnvelope, value: bytes) -> EventEnvelope:
    """Remember `value` as the envelope's record value (it must be `to_json_bytes(envelope)`)."""
    envelope._wire = value
    return envelope


def headers_to_json(headers: Sequence[tuple[str, bytes]]) -> str:
    """Kafka headers as JSON text for PostgreSQL: values (bytes) kept exactly, as base64, in
    their original order (the event archive and the command spool store them so)."""
    return orjson.dumps([[name, base64.b64encode(raw).decode()] for name, raw in headers]).decode()


def headers_from_json(text: str) -> KafkaHeaders:
    return [(name, base64.b64decode(raw)) for name, raw in orjson.loads(text)]


def wire_bytes(envelope: EventEnvelope) -> bytes | None:
    """The record value `envelope` was read from or sealed into, if it was."""
    return envelope._wire


def encode_event(envelope: EventEnvelope) -> tuple[bytes, bytes, KafkaHeaders]:
    """Key, value and headers of the Kafka record that carries `envelope`."""
    headers: KafkaHeaders = [
        (HEADER_KIND, b"event"),
        (HEADER_TYPE, envelope.type.encode()),
        (HEADER_VERSION, str(envelope.schema_version).encode()),
        (HEADER_ID, str(envelope.event_id).encode()),
        (HEADER_TENANT_SEQ, str(envelope.tenant_seq).encode()),
    ]
    wire = envelope._wire  # one read: private attributes go through pydantic's __getattr__
    value = wire if wire is not None else to_json_bytes(envelope)
    return str(envelope.tenant_id).encode(), value, headers


def decode_event(value: bytes) -> EventEnvelope:
    """Parse a record value; raises `pydantic.ValidationError` (also for malformed JSON)."""
    return with_wire_bytes(EventEnvelope.model_validate_json(value), value)


def encode_command(envelope: CommandEnvelope) -> tuple[bytes, bytes, KafkaHeaders]:
    """Key, value and headers of the Kafka record that carries `envelope`."""
    headers: KafkaHeaders = [
        (HEADER_KIND, b"command"),
        (HEADER_TYPE, envelope.type.encode()),
        (HEADER_VERSION, str(envelope.schema_version).encode()),
        (HEADER_ID, str(envelope.command_id).encode()),
    ]
    return str(envelope.tenant_id).encode(), to_json_bytes(envelope), headers


def encode_command_fields(
    *,
    command_id: UUID,
    tenant_id: UUID,
    type: str,
    schema_version: int,
    issued_at: datetime,
    correlation_id: UUID,
    idempotency_key: str | None,
    payload: Payload,
) -> tuple[bytes, bytes, KafkaHeaders]:
    """`encode_command` of the envelope these fields make, without building it.

    For hot paths whose fields are already valid and whose payload is JSON-mode (str, int,
    float, bool, None, lists and dicts of those); `test_envelope` holds the bytes equal to
    `encode_command`'s, so the decider reads them exactly like any other command.
    """
    if issued_at.tzinfo is None or issued_at.utcoffset() is None:
        raise ValueError("issued_at must be timezone-aware")
    ident = str(command_id)
    body = {
        "command_id": ident,
        "correlation_id": str(correlation_id),
        "idempotency_key": idempotency_key,
        "issued_at": issued_at,
        "payload": payload,
        "schema_version": schema_version,
        "tenant_id": str(tenant_id),
        "type": type,
    }
    value = orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)
    headers: KafkaHeaders = [
        (HEADER_KIND, b"command"),
        (HEADER_TYPE, type.encode()),
        (HEADER_VERSION, str(schema_version).encode()),
        (HEADER_ID, ident.encode()),
    ]
    return str(tenant_id).encode(), value, headers


def decode_command(value: bytes) -> CommandEnvelope:
    """Parse a record value; raises `pydantic.ValidationError` (also for malformed JSON)."""
    return CommandEnvelope.model_validate_json(value)


def header(headers: KafkaHeaders | tuple[tuple[str, bytes], ...], name: str) -> str | None:
    """The value of one header as text, for filtering records without decoding them."""
    for key, raw in headers:
        if key == name:
            return raw.decode()
    return None
