"""`zapflow topics ensure` against the real broker: creates, is idempotent, restores drift."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams import kafka
from streams.topics import EVENTS, TOPICS, TopicDrift, TopicSpec, ensure_topics

pytestmark = pytest.mark.integration


@pytest.fixture
async def admin(bootstrap_servers: str) -> AsyncIterator[AIOKafkaAdminClient]:
    client = kafka.admin(bootstrap_servers)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


async def _configs(admin: AIOKafkaAdminClient, topic: str) -> dict[str, str]:
    (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return {entry[0]: entry[1] for entry in response.resources[0][4]}


async def test_ensure_creates_the_three_topics_then_changes_nothing(
    admin: AIOKafkaAdminClient,
) -> None:
    first = await ensure_topics(admin, partitions=12, replication=1)
    assert set(first.created) | set(first.existing) == {spec.name for spec in TOPICS}
    second = await ensure_topics(admin, partitions=12, replication=1)
    assert second.created == []
    assert second.configs_updated == []
    assert set(second.existing) == {spec.name for spec in TOPICS}
    (events,) = await admin.describe_topics([EVENTS])
    assert len(events["partitions"]) == 12
    configs = await _configs(admin, EVENTS)
    assert (configs["retention.ms"], configs["cleanup.policy"]) == ("-1", "delete")


async def test_drifted_config_is_restored_or_refused_never_ignored(
    admin: AIOKafkaAdminClient,
) -> None:
    spec = TopicSpec(f"test.drift.{uuid.uuid4().hex[:8]}", {"retention.ms": "-1"})
    await admin.create_topics([NewTopic(spec.name, 3, 1, topic_configs={"retention.ms": "1000"})])
    refused: TopicDrift | None = None
    try:
        report = await ensure_topics(admin, 3, 1, (spec,))
    except TopicDrift as exc:  # the dev broker has no AlterConfigs (ADR 0006)
        refused = exc
    if refused is not None:
        assert "retention.ms" in str(refused)
        assert "cannot alter" in str(refused)
        assert (await _configs(admin, spec.name))["retention.ms"] == "1000"
    else:
        assert report.configs_updated == [spec.name]
        assert (await _configs(admin, spec.name))["retention.ms"] == "-1"


async def test_a_partition_count_mismatch_is_refused(admin: AIOKafkaAdminClient) -> None:
    spec = TopicSpec(f"test.parts.{uuid.uuid4().hex[:8]}", {"retention.ms": "-1"})
    await ensure_topics(admin, 3, 1, (spec,))
    with pytest.raises(TopicDrift, match="has 3 partitions but ZAPFLOW_TOPIC_PARTITIONS=6"):
        await ensure_topics(admin, 6, 1, (spec,))
