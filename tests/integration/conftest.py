"""Fixtures shared by the projector's integration tests."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from aiokafka.admin import NewTopic

from projections.migrations import migrate
from streams import kafka

PARTITIONS = 12


@pytest.fixture
async def topic(bootstrap_servers: str) -> str:
    """An event topic of the test's own on the session broker (12 partitions, kept forever)."""
    name = f"test.events.{uuid.uuid4().hex[:8]}"
    admin = kafka.admin(bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, PARTITIONS, 1, topic_configs={"retention.ms": "-1"})]
        )
    finally:
        await admin.close()
    return name


@pytest.fixture
async def migrated(db: asyncpg.Connection) -> asyncpg.Connection:
    """The test's database with every migration applied."""
    await migrate(db)
    return db
