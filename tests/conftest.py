"""Session fixtures: a real Kafka-compatible broker and a real PostgreSQL database.

Broker: the Tansu dev broker on a free port, or Redpanda via testcontainers when
ZAPFLOW_TEST_CONTAINERS=1 and a Docker engine answers. PostgreSQL: a fresh database on the
server of DATABASE_URL (dropped afterwards), else the embedded server in a temporary folder,
or a Postgres container under ZAPFLOW_TEST_CONTAINERS=1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import NewTopic

from projections.database import connect, ensure_database
from projections.migrations import migrate
from streams import kafka
from zapflow.devbroker import start_dev_broker
from zapflow.devdb import start_embedded_postgres
from zapflow.setup import ensure_topics_on


def _containers_wanted() -> bool:
    return os.environ.get("ZAPFLOW_TEST_CONTAINERS") == "1" and shutil.which("docker") is not None


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if _containers_wanted():
        from testcontainers.kafka import RedpandaContainer

        with RedpandaContainer("docker.redpanda.com/redpandadata/redpanda:v25.2.10") as redpanda:
            yield redpanda.get_bootstrap_server()
        return
    broker = start_dev_broker(0, tmp_path_factory.mktemp("broker") / "tansu.log")
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of a PostgreSQL server we may create databases on (its maintenance database)."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    if _containers_wanted():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17", driver=None) as container:
            yield container.get_connection_url()
        return
    # Not under pytest's base temp: a concurrent pytest session resets that folder to 0o700,
    # which locks out the server's unprivileged user mid-run.
    home = Path(tempfile.mkdtemp(prefix="zapflow-test-pg-"))
    server = start_embedded_postgres(home, 0, home / "pg.log")
    try:
        yield server.url("postgres")
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


async def fresh_database(server: str) -> str:
    """Create an empty, uniquely named database on `server`; returns its URL."""
    name = f"zapflow_test_{uuid.uuid4().hex[:12]}"
    await ensure_database(server, name)
    return _with_database(server, name)


async def drop_database(server: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await connect(server)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(server_url: str) -> AsyncIterator[str]:
    """An empty database of its own for one test."""
    url = await fresh_database(server_url)
    try:
        yield url
    finally:
        await drop_database(server_url, url)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(database_url)
    try:
        yield conn
    finally:
        await asyncio.shield(conn.close())


@pytest.fixture
async def producer(bootstrap_servers: str) -> AsyncIterator[AIOKafkaProducer]:
    """A producer on the session broker (modules with a broker of their own override it)."""
    producer = kafka.producer(bootstrap_servers)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture
async def fresh_broker(tmp_path: Path) -> AsyncIterator[str]:
    """A broker of the test's own, with zapflow's topics (for tests of fixed-name topics)."""
    broker = start_dev_broker(0, tmp_path / "tansu.log")
    try:
        await ensure_topics_on(broker.bootstrap_servers, partitions=12)
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture
async def topic(bootstrap_servers: str) -> str:
    """An event topic of the test's own on the session broker (12 partitions, kept forever)."""
    name = f"test.events.{uuid.uuid4().hex[:8]}"
    admin = kafka.admin(bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 12, 1, topic_configs={"retention.ms": "-1"})])
    finally:
        await admin.close()
    return name


@pytest.fixture
async def migrated(db: asyncpg.Connection) -> asyncpg.Connection:
    """The test's database with every migration applied."""
    await migrate(db)
    return db
