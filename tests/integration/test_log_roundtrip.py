"""Events appended through the real broker read back group-less, verify, and expose tampering."""

from __future__ import annotations

import uuid
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from events.chain import ChainVerifier, head_of
from events.envelope import HEADER_TYPE, EventEnvelope, encode_event, header
from streams import kafka
from streams.log import Position, append, read_all
from tests.builders import chain

pytestmark = pytest.mark.integration


@pytest.fixture
async def topic(bootstrap_servers: str) -> str:
    name = f"test.events.{uuid.uuid4().hex[:8]}"
    admin = kafka.admin(bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 4, 1, topic_configs={"retention.ms": "-1"})])
    finally:
        await admin.close()
    return name


async def _read_back(servers: str, topic: str) -> list[tuple[Position, EventEnvelope]]:
    consumer = kafka.groupless_consumer(servers)
    await consumer.start()
    try:
        return [item async for item in read_all(consumer, topic, idle_timeout_ms=5000)]
    finally:
        await consumer.stop()


def _verify(read: list[tuple[Position, EventEnvelope]]) -> dict[uuid.UUID, ChainVerifier]:
    verifiers: dict[uuid.UUID, ChainVerifier] = defaultdict(ChainVerifier)
    for position, envelope in read:
        verifiers[envelope.tenant_id].feed(envelope, str(position))
    return verifiers


async def test_append_then_groupless_read_verifies_per_tenant(
    bootstrap_servers: str, topic: str, producer: AIOKafkaProducer
) -> None:
    tenants = [uuid.uuid4() for _ in range(3)]
    written = {tenant: chain(tenant, 25) for tenant in tenants}
    for index in range(25):  # interleave tenants the way a live log does
        await append(producer, [written[t][index] for t in tenants], topic)
    await append(producer, written[tenants[0]][:5], topic)  # an at-least-once re-append

    read = await _read_back(bootstrap_servers, topic)
    verifiers = _verify(read)
    assert set(verifiers) == set(tenants)
    for tenant in tenants:
        assert verifiers[tenant].ok, verifiers[tenant].issues
        assert verifiers[tenant].head.tenant_seq == 25
    assert verifiers[tenants[0]].duplicates == 5
    partitions = {pos.partition for pos, env in read if env.tenant_id == tenants[1]}
    assert len(partitions) == 1, "one tenant's events share one partition (key = tenant_id)"


async def test_a_tampered_record_in_the_log_is_detected_with_its_position(
    bootstrap_servers: str, topic: str, producer: AIOKafkaProducer
) -> None:
    tenant = uuid.uuid4()
    good = chain(tenant, 3)
    await append(producer, good, topic)
    nxt = chain(tenant, 1, head_of(good[-1]))[0]
    forged = nxt.model_copy(update={"payload": {**nxt.payload, "reason": "rewritten"}})
    key, value, headers = encode_event(forged)
    meta = await producer.send_and_wait(topic, value, key=key, headers=headers)

    read = await _read_back(bootstrap_servers, topic)
    assert all(header(encode_event(e)[2], HEADER_TYPE) == "CommandRejected" for _, e in read)
    verifier = _verify(read)[tenant]
    assert [(i.kind, i.tenant_seq) for i in verifier.issues] == [("tampered", 4)]
    assert verifier.issues[0].position == f"partition {meta.partition} offset {meta.offset}"
