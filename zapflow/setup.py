"""`zapflow setup`: what a deployment needs before its processes start: migrations, topics."""

from __future__ import annotations

import logging

from projections import migrations
from projections.database import connect, probe, redact
from streams import kafka
from streams.topics import EnsureReport, ensure_topics
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints
from zapflow.settings import Settings

log = logging.getLogger("zapflow.setup")


async def check_broker(bootstrap_servers: str, timeout_s: float) -> None:
    problem = await kafka.probe(bootstrap_servers, timeout_s)
    if problem is not None:
        raise ConfigurationError(
            "KAFKA_BOOTSTRAP_SERVERS", bootstrap_servers, f"broker unreachable ({problem})"
        )


async def check_database(database_url: str, timeout_s: float) -> None:
    problem = await probe(database_url, timeout_s)
    if problem is not None:
        raise ConfigurationError(
            "DATABASE_URL", redact(database_url), f"cannot connect ({problem})"
        )


async def apply_migrations(database_url: str, timeout_s: float) -> list[str]:
    await check_database(database_url, timeout_s)
    conn = await connect(database_url, timeout_s)
    try:
        return await migrations.migrate(conn)
    finally:
        await conn.close()


async def ensure(bootstrap_servers: str, settings: Settings) -> EnsureReport:
    await check_broker(bootstrap_servers, settings.connect_timeout_s)
    return await ensure_topics_on(
        bootstrap_servers, settings.topic_partitions, settings.topic_replication
    )


async def ensure_topics_on(
    bootstrap_servers: str, partitions: int, replication: int = 1
) -> EnsureReport:
    client = kafka.admin(bootstrap_servers)
    await client.start()
    try:
        return await ensure_topics(client, partitions, replication)
    finally:
        await client.close()


async def setup(endpoints: Endpoints, settings: Settings) -> tuple[list[str], EnsureReport]:
    applied = await apply_migrations(endpoints.database_url, settings.connect_timeout_s)
    report = await ensure(endpoints.bootstrap_servers, settings)
    log.info("migrations applied: %s; topics created: %s", applied or "none", report.created)
    return applied, report
