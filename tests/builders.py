"""Builders of valid envelopes for tests: deterministic, sealed through the real chain code."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from events.chain import GENESIS, ChainHead, head_of, seal
from events.envelope import EventDraft, EventEnvelope
from events.platform import CommandRejected

EPOCH = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def draft(tenant_id: uuid.UUID, index: int, note: str = "") -> EventDraft:
    command_id = uuid.uuid5(tenant_id, f"command-{index}")
    event = CommandRejected(
        command_id=str(command_id),
        command_type="HandOffToHuman",
        reason_code="already_human",
        reason=f"conversation already owned by a human {note}".strip(),
    )
    return EventDraft(
        event_id=uuid.uuid5(command_id, "0"),
        type=event.type,
        schema_version=event.schema_version,
        tenant_id=tenant_id,
        stream=f"conversation:{uuid.uuid5(tenant_id, 'c')}",
        occurred_at=EPOCH + timedelta(seconds=index),
        recorded_at=EPOCH + timedelta(seconds=index, milliseconds=5),
        correlation_id=command_id,
        causation_id=command_id,
        payload=event.payload(),
    )


def chain(tenant_id: uuid.UUID, count: int, start: ChainHead = GENESIS) -> list[EventEnvelope]:
    """`count` consecutive sealed events of one tenant."""
    sealed, head = [], start
    for index in range(start.tenant_seq, start.tenant_seq + count):
        envelope = seal(draft(tenant_id, index), head)
        sealed.append(envelope)
        head = head_of(envelope)
    return sealed


def tenant_registered(tenant_id: uuid.UUID, index: int = 0, **overrides: object) -> EventDraft:
    """A `TenantRegistered` draft; `overrides` replace payload fields, unvalidated (for poison)."""
    import hashlib

    from events.tenant import TenantRegistered

    command_id = uuid.uuid5(tenant_id, f"register-{index}")
    event = TenantRegistered(
        name=f"Tenant {tenant_id.hex[:6]}",
        twilio_account_sid=f"AC{tenant_id.hex}",
        twilio_auth_token_encrypted=f"encrypted-{tenant_id.hex}",
        senders=["whatsapp:+14155238886", f"whatsapp:+1555{tenant_id.int % 10**7:07d}"],
        api_key_sha256=hashlib.sha256(f"key-{tenant_id}".encode()).hexdigest(),
    )
    return EventDraft(
        event_id=uuid.uuid5(command_id, "0"),
        type=event.type,
        schema_version=event.schema_version,
        tenant_id=tenant_id,
        stream=f"tenant:{tenant_id}",
        occurred_at=EPOCH + timedelta(seconds=index),
        recorded_at=EPOCH + timedelta(seconds=index, milliseconds=5),
        correlation_id=command_id,
        causation_id=command_id,
        payload={**event.payload(), **overrides},
    )
