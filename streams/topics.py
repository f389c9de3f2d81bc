"""The topics zapflow owns, created explicitly and idempotently (never by broker auto-creation)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion

COMMANDS: Final = "zapflow.commands"
EVENTS: Final = "zapflow.events"
DLQ: Final = "zapflow.dlq"
SHADOW_PREFIX: Final = "zapflow.shadow."
"""What-if runs (ADR 0017): `zapflow.shadow.<run>`, written by `zapflow reprocess` only and read
by its report only; never by the decider, the sender or a projector."""
_RUN_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

_DAY_MS: Final = 24 * 3600 * 1000
_TOPIC_ALREADY_EXISTS: Final = 36
SHADOW_CONFIGS: Final = {"retention.ms": str(30 * _DAY_MS), "cleanup.policy": "delete"}


def shadow_topic(run: str) -> str:
    """The topic of what-if run `run`; `ValueError` unless the name is 1 to 63 characters of
    a-z, 0-9, `-` and `_`, starting with a letter or digit (no dots: a run is one topic, never a
    prefix of another run's)."""
    if not _RUN_NAME.fullmatch(run):
        raise ValueError(
            "must be 1 to 63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return SHADOW_PREFIX + run


def is_shadow(topic: str) -> bool:
    return topic.startswith(SHADOW_PREFIX)


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    configs: dict[str, str]


TOPICS: Final = (
    TopicSpec(COMMANDS, {"retention.ms": str(7 * _DAY_MS), "cleanup.policy": "delete"}),
    # The event store: kept forever, never compacted.
    TopicSpec(EVENTS, {"retention.ms": "-1", "cleanup.policy": "delete"}),
    TopicSpec(DLQ, {"retention.ms": str(30 * _DAY_MS), "cleanup.policy": "delete"}),
)


class TopicDrift(Exception):
    """An existing topic differs from its spec in a way we must not paper over."""


@dataclass(slots=True)
class EnsureReport:
    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    configs_updated: list[str] = field(default_factory=list)


async def ensure_topics(
    admin: AIOKafkaAdminClient,
    partitions: int,
    replication: int,
    specs: tuple[TopicSpec, ...] = TOPICS,
) -> EnsureReport:
    """Create missing topics; for existing ones check partitions and restore drifted configs."""
    report = EnsureReport()
    present = set(await admin.list_topics())
    missing = [spec for spec in specs if spec.name not in present]
    if missing:
        response = await admin.create_topics(
            [NewTopic(s.name, partitions, replication, topic_configs=s.configs) for s in missing]
        )
        for name, code, message in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise TopicDrift(f"cannot create {name}: error {code} {message}")
        report.created = [spec.name for spec in missing]
    for spec in specs:
        if spec.name in present:
            report.existing.append(spec.name)
        await _check_partitions(admin, spec.name, partitions)
        if await _restore_configs(admin, spec):
            report.configs_updated.append(spec.name)
    return report


async def _check_partitions(admin: AIOKafkaAdminClient, name: str, expected: int) -> None:
    (description,) = await admin.describe_topics([name])
    actual = len(description["partitions"])
    if actual != expected:
        raise TopicDrift(
            f"{name} has {actual} partitions but ZAPFLOW_TOPIC_PARTITIONS={expected}; "
            "changing the count re-maps tenants to partitions and needs a planned migration"
        )


async def _restore_configs(admin: AIOKafkaAdminClient, spec: TopicSpec) -> bool:
    resource = ConfigResource(ConfigResourceType.TOPIC, spec.name)
    (response,) = await admin.describe_configs([resource])
    current: dict[str, str] = {}
    for _code, _msg, _type, _name, entries in response.resources:
        current = {entry[0]: entry[1] for entry in entries}
    drifted = {k: v for k, v in spec.configs.items() if current.get(k) != v}
    if not drifted:
        return False
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, drifted)])
    except IncompatibleBrokerVersion:
        raise TopicDrift(
            f"{spec.name}: configs {drifted} differ from the spec and this broker cannot alter "
            "topic configs (no AlterConfigs); fix them with the broker's own tools"
        ) from None
    return True
