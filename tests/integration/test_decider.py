"""The decider on a real broker: exactly-once inbound, monotonic status, chain, DLQ, restart."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.operator import HandOffToHuman, RequestOutboundMessage
from commands.tenant import RegisterTenant
from events.chain import verify_chain
from events.envelope import CommandEnvelope, EventEnvelope, encode_command
from events.registry import Message
from streams import kafka
from streams.decider import Decider, Topics, run_decider
from streams.log import read_all
from streams.topics import COMMANDS, DLQ, EVENTS

pytestmark = pytest.mark.integration
ACCOUNT = "AC" + "0" * 32
SENDER = "whatsapp:+14155238886"


def command(
    tenant: uuid.UUID, body: Message, command_id: uuid.UUID | None = None
) -> CommandEnvelope:
    cid = command_id or uuid.uuid4()
    return CommandEnvelope(
        command_id=cid,
        tenant_id=tenant,
        type=body.type,
        schema_version=body.schema_version,
        issued_at=datetime(2026, 11, 25, 10, 0, tzinfo=UTC),
        correlation_id=cid,
        payload=body.payload(),
    )


def register(tenant: uuid.UUID, account: str = ACCOUNT, sender: str = SENDER) -> CommandEnvelope:
    return command(
        tenant,
        RegisterTenant(
            name="Clínica Sorriso",
            twilio_account_sid=account,
            twilio_auth_token_encrypted=base64.b64encode(b"sealed").decode(),
            senders=[sender],
            api_key_sha256=hashlib.sha256(tenant.bytes).hexdigest(),
        ),
    )


def inbound(tenant: uuid.UUID, sid: str, contact: str, body: str = "Oi") -> CommandEnvelope:
    message = ReceiveInboundMessage(
        message_sid=sid, account_sid=ACCOUNT, contact=contact, sender=SENDER, body=body
    )
    return command(tenant, message, uuid.uuid5(tenant, f"inbound:{sid}"))


def status(tenant: uuid.UUID, sid: str, contact: str, value: str) -> CommandEnvelope:
    message = RecordDeliveryStatus(
        message_sid=sid, account_sid=ACCOUNT, status=value, contact=contact, sender=SENDER
    )
    return command(tenant, message)


@pytest.fixture
async def producer(fresh_broker: str) -> AsyncIterator[AIOKafkaProducer]:
    producer = kafka.producer(fresh_broker)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def send(producer: AIOKafkaProducer, *commands: CommandEnvelope) -> None:
    for envelope in commands:
        key, value, headers = encode_command(envelope)
        await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)


async def events_of(servers: str, tenant: uuid.UUID, at_least: int) -> list[EventEnvelope]:
    """The tenant's events once at least `at_least` are in the log (bounded wait)."""
    found: list[EventEnvelope] = []
    for _ in range(60):
        consumer = kafka.groupless_consumer(servers)
        await consumer.start()
        try:
            found = [e async for _, e in read_all(consumer, EVENTS) if e.tenant_id == tenant]
        finally:
            await consumer.stop()
        if len(found) >= at_least:
            return found
        await asyncio.sleep(0.5)
    raise AssertionError(f"only {len(found)} events of {at_least} arrived")


async def dlq_records(servers: str) -> list[ConsumerRecord]:
    consumer = kafka.groupless_consumer(servers)
    await consumer.start()
    try:
        partitions = [TopicPartition(DLQ, p) for p in range(12)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        batch = await consumer.getmany(timeout_ms=3000)
        return [record for records in batch.values() for record in records]
    finally:
        await consumer.stop()


async def _decider(servers: str) -> tuple[asyncio.Event, asyncio.Task[None]]:
    stop = asyncio.Event()
    return stop, asyncio.create_task(run_decider(servers, stop, session_timeout_ms=6000))


async def test_inbound_status_and_operator_commands_become_one_chain(
    fresh_broker: str, producer: AIOKafkaProducer
) -> None:
    tenant, contact = uuid.uuid4(), "whatsapp:+5511999990001"
    stop, task = await _decider(fresh_broker)
    try:
        await send(producer, register(tenant))
        await send(producer, *[inbound(tenant, "SM1", contact)] * 3)  # Twilio retried
        await send(producer, inbound(tenant, "SM2", contact, "STOP"))
        for value in ("delivered", "sent", "read", "delivered", "failed"):  # out of order
            await send(producer, status(tenant, "SMout", contact, value))
        await send(producer, inbound(tenant, "SM3", "whatsapp:US.ABC123XYZ"))  # a BSUID contact
        await send(producer, inbound(tenant, "SM1", contact))  # and once more, later
        events = await events_of(fresh_broker, tenant, at_least=9)
    finally:
        stop.set()
        await task
    types = Counter(e.type for e in events)
    assert types["TenantRegistered"] == 1
    assert types["InboundMessageReceived"] == 3  # SM1 once, SM2, SM3
    assert types["ConversationStarted"] == 2
    assert types["ContactOptedOut"] == 1
    statuses = [e.payload["status"] for e in events if e.type == "DeliveryStatusChanged"]
    assert statuses == ["delivered", "read"]  # sent, a second delivered, failed: all regressions
    assert verify_chain(events).ok
    assert [e.tenant_seq for e in events] == list(range(1, len(events) + 1))


async def test_rejections_are_events_and_poison_goes_to_the_dlq(
    fresh_broker: str, producer: AIOKafkaProducer
) -> None:
    tenant, contact = uuid.uuid4(), "whatsapp:+5511999990002"
    stop, task = await _decider(fresh_broker)
    try:
        await send(producer, register(tenant), inbound(tenant, "SM9", contact, "STOP"))
        conversation = [e for e in await events_of(fresh_broker, tenant, 4)][1].payload[
            "conversation_id"
        ]
        bot_reply = RequestOutboundMessage(conversation_id=conversation, author="bot", body="Olá")
        takeover = HandOffToHuman(conversation_id=conversation, operator="ana")
        await send(producer, command(tenant, bot_reply), command(tenant, takeover))
        await send(producer, command(tenant, takeover))  # already human: rejected
        await producer.send_and_wait(COMMANDS, b"{not json", key=str(tenant).encode())
        await send(producer, inbound(tenant, "SM10", contact, "VOLTAR"))
        events = await events_of(fresh_broker, tenant, at_least=9)
    finally:
        stop.set()
        await task
    rejected = [e.payload["reason_code"] for e in events if e.type == "CommandRejected"]
    assert rejected == ["contact_opted_out", "invalid_state_human"]
    assert [e.type for e in events][-2:] == ["InboundMessageReceived", "ContactOptedIn"]
    assert verify_chain(events).ok

    (dead,) = await dlq_records(fresh_broker)
    assert dead.value == b"{not json"
    assert dead.key == str(tenant).encode()
    assert dict(dead.headers)["zf-error"].startswith(b"ValidationError")


async def test_a_restarted_decider_rebuilds_state_from_the_log(
    fresh_broker: str, producer: AIOKafkaProducer
) -> None:
    tenant, contact = uuid.uuid4(), "whatsapp:+5511999990003"
    stop, task = await _decider(fresh_broker)
    try:
        await send(producer, register(tenant), inbound(tenant, "SMa", contact))
        await events_of(fresh_broker, tenant, at_least=3)
    finally:
        stop.set()
        await task
    stop, task = await _decider(fresh_broker)
    try:
        await send(producer, inbound(tenant, "SMa", contact), inbound(tenant, "SMb", contact))
        events = await events_of(fresh_broker, tenant, at_least=4)
    finally:
        stop.set()
        await task
    assert [e.type for e in events] == [
        "TenantRegistered",
        "ConversationStarted",
        "InboundMessageReceived",
        "InboundMessageReceived",
    ]
    assert [e.payload["message_sid"] for e in events[2:]] == ["SMa", "SMb"]
    assert verify_chain(events).ok


async def _command_records(servers: str, partition: int) -> list[ConsumerRecord]:
    consumer = kafka.groupless_consumer(servers)
    await consumer.start()
    try:
        tp = TopicPartition(COMMANDS, partition)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        batch = await consumer.getmany(tp, timeout_ms=3000)
        records: list[ConsumerRecord] = batch.get(tp, [])
        return records
    finally:
        await consumer.stop()


async def test_a_batch_whose_append_fails_leaves_no_decision_behind(
    fresh_broker: str, producer: AIOKafkaProducer
) -> None:
    tenant, contact = uuid.uuid4(), "whatsapp:+5511999990004"
    await send(producer, register(tenant), inbound(tenant, "SMf", contact))
    metadata = await producer.client.fetch_all_metadata()
    partition = producer._partition(COMMANDS, None, None, None, str(tenant).encode(), None)
    assert partition in metadata.partitions_for_topic(COMMANDS)
    records = await _command_records(fresh_broker, partition)
    assert len(records) == 2
    tp = TopicPartition(COMMANDS, partition)

    closed = kafka.producer(fresh_broker)
    await closed.start()
    await closed.stop()  # every append now fails, after the batch was decided
    decider = Decider(fresh_broker, closed, Topics())
    await decider.rebuild(partition)
    with pytest.raises(KafkaError):
        await decider.handle(tp, records)
    # The decisions the log never got are forgotten: the partition decides nothing until rebuilt.
    assert partition not in decider.partitions
    assert await decider.handle(tp, records) is False

    decider.producer = producer
    await decider.rebuild(partition)
    assert await decider.handle(tp, records) is True
    events = await events_of(fresh_broker, tenant, at_least=3)
    assert [(e.type, e.tenant_seq) for e in events] == [
        ("TenantRegistered", 1),
        ("ConversationStarted", 2),
        ("InboundMessageReceived", 3),
    ]
    assert verify_chain(events).ok
