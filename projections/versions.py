"""Versioned projections: each version in a schema of its own, one active, swapped atomically.

A rebuild (`zapflow projections rebuild NAME`, `rebuild` below) creates version N+1 (schema
`NAME_vN+1`, tables from `schemas/projections/NAME.sql`), fills it from offset 0 with a projector
of its own (its own positions, named after the version, so the live projector is untouched)
while the active version goes on serving, and, once it has caught up with the log, makes it the
active one in one transaction. Readers pick the active version's schema in the first statement
of each transaction (`projections.read.tenant_scope`), so a transaction reads one version
whole; the live projector looks for a new active version between fetches (`live`) and
carries on from that version's own positions. The old version stays, retired, until
`drop_old`. See ADR 0012.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from aiokafka import AIOKafkaConsumer

from projections import agents, conversations, identity, status, tenants
from projections.batch import Projection
from projections.checkpoints import partition_offsets
from projections.database import Conn, connect

log = logging.getLogger("zapflow.projections")

DDL_DIR: Final = Path(__file__).resolve().parent.parent / "schemas" / "projections"
TABLES: Final[dict[str, tuple[str, ...]]] = {conversations.NAME: conversations.TABLES}
UNVERSIONED: Final[tuple[Projection, ...]] = (
    tenants.PROJECTION, agents.PROJECTION, identity.PROJECTION
)  # fmt: skip
"""The projections that have one version only, always live (in `public`)."""
"""The versioned projections and the tables each version has."""
LOCK: Final = "SELECT pg_advisory_xact_lock(hashtext('zapflow.projection_versions'))"
"""Taken by whatever changes which version is active or drops one, and by a per-tenant rebuild's
swap (`projections.tenant_rebuild`), which must find the version it built for still active."""


class UnknownProjection(ValueError):
    """Not a versioned projection."""


class RebuildRefused(RuntimeError):
    """A rebuild or a drop that must not go ahead (said why)."""


@dataclass(frozen=True, slots=True)
class Version:
    projection: str
    version: int
    schema: str
    state: str


def projection(name: str, version: int) -> conversations.Versioned:
    """The projection that maintains version `version` of `name` (its tables in its `schema`)."""
    if name != conversations.NAME:
        raise UnknownProjection(_unknown(name))
    return conversations.Versioned(version)


def _unknown(name: str) -> str:
    return f"unknown projection {name!r}; versioned projections: {', '.join(sorted(TABLES))}"


async def versions(conn: Conn, name: str | None = None) -> list[Version]:
    if not await conn.fetchval("SELECT to_regclass('projection_versions') IS NOT NULL"):
        raise RebuildRefused("the database has no projection_versions table; run `zapflow setup`")
    rows = await conn.fetch(
        "SELECT projection, version, schema_name, state FROM projection_versions "
        "WHERE $1::text IS NULL OR projection = $1 ORDER BY projection, version",
        name,
    )
    return [Version(r["projection"], r["version"], r["schema_name"], r["state"]) for r in rows]


async def live(conn: Conn) -> tuple[Projection, ...]:
    """What the live projector maintains: the tenant directory and each active version."""
    active = [v for v in await versions(conn) if v.state == "active"]
    return (
        *UNVERSIONED,
        *(projection(v.projection, v.version) for v in active if v.projection in TABLES),
    )


async def building(conn: Conn) -> tuple[Projection, ...]:
    """The versions a rebuild is filling (for status reports)."""
    found = [v for v in await versions(conn) if v.state == "building"]
    return tuple(projection(v.projection, v.version) for v in found if v.projection in TABLES)


async def begin(conn: Conn, name: str) -> Version:
    """The version to build: an unfinished one (a rebuild interrupted earlier resumes from its
    positions), else a new one, created with its schema and empty tables."""
    if name not in TABLES:
        raise UnknownProjection(_unknown(name))
    async with conn.transaction():
        await conn.execute(LOCK)
        known = await versions(conn, name)
        if not any(v.state == "active" for v in known):
            raise RebuildRefused(f"{name} has no active version; run `zapflow setup`")
        unfinished = [v for v in known if v.state == "building"]
        if unfinished:
            return unfinished[0]
        number = max(v.version for v in known) + 1
        schema = projection(name, number).schema
        ddl = (DDL_DIR / f"{name}.sql").read_text()
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO zapflow_app, zapflow_projector")
        await conn.execute("SELECT set_config('search_path', $1, true)", schema)
        await conn.execute(ddl)
        await conn.execute("SELECT set_config('search_path', 'public', true)")
        await conn.execute(
            "INSERT INTO projection_versions (projection, version, schema_name, state) "
            "VALUES ($1, $2, $3, 'building')",
            name, number, schema,
        )  # fmt: skip
        return Version(name, number, schema, "building")


async def swap(conn: Conn, built: Version) -> Version:
    """Make `built` the active version and retire the one it replaces, in one transaction;
    returns the retired one."""
    async with conn.transaction():
        await conn.execute(LOCK)
        known = {v.version: v for v in await versions(conn, built.projection)}
        if known.get(built.version, built).state != "building":
            raise RebuildRefused(f"{built.projection} version {built.version} is not being built")
        (old,) = [v for v in known.values() if v.state == "active"]
        await conn.execute(
            "UPDATE projection_versions SET state = 'retired', retired_at = now() "
            "WHERE projection = $1 AND version = $2",
            old.projection, old.version,
        )  # fmt: skip
        await conn.execute(
            "UPDATE projection_versions SET state = 'active', activated_at = now() "
            "WHERE projection = $1 AND version = $2",
            built.projection, built.version,
        )  # fmt: skip
    return old


async def drop_old(conn: Conn, name: str | None = None) -> list[Version]:
    """Drop the tables of every retired version (of `name`, or of all) and forget their
    positions; the version stays listed as `dropped`."""
    if name is not None and name not in TABLES:
        raise UnknownProjection(_unknown(name))
    dropped = []
    async with conn.transaction():
        await conn.execute(LOCK)
        for old in [v for v in await versions(conn, name) if v.state == "retired"]:
            if old.schema == "public":
                tables = ", ".join(f"public.{table}" for table in TABLES[old.projection])
                await conn.execute(f"DROP TABLE IF EXISTS {tables}")
            else:
                await conn.execute(f"DROP SCHEMA IF EXISTS {old.schema} CASCADE")
            position = projection(old.projection, old.version).name
            for table in ("projection_checkpoints", "projection_tenant_seq", "projection_status"):
                await conn.execute(f"DELETE FROM {table} WHERE projection = $1", position)  # noqa: S608 - constant
            await conn.execute(
                "UPDATE projection_versions SET state = 'dropped' "
                "WHERE projection = $1 AND version = $2",
                old.projection, old.version,
            )  # fmt: skip
            dropped.append(Version(old.projection, old.version, old.schema, "dropped"))
    return dropped


@dataclass(frozen=True, slots=True)
class Rebuilt:
    projection: str
    version: int
    schema: str
    replaced: int
    seconds: float
    positions: dict[int, int]


async def rebuild(
    bootstrap_servers: str,
    database_url: str,
    name: str,
    topic: str = "zapflow.events",
    progress: Callable[[int, int], None] | None = None,
    poll_s: float = 0.5,
) -> Rebuilt:
    """Build a new version of `name` from offset 0, then swap it in (see the module doc).

    Caught up means: every partition's position has reached the log end seen at the previous
    look, so a rebuild faster than the traffic always finishes; what arrives after that is the
    live projector's to project, from the new version's positions, once it sees the swap.
    """
    from projections.runner import run_projector  # the runner resolves versions through us

    started = time.perf_counter()
    conn = await connect(database_url)
    try:
        target = await begin(conn, name)
        built = projection(name, target.version)
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_projector(bootstrap_servers, database_url, stop, [built], topic, archive=False)
        )
        try:
            positions = await _until_caught_up(conn, bootstrap_servers, topic, built, task, poll_s,
                                               progress)  # fmt: skip
        finally:
            stop.set()
            await task
        old = await swap(conn, target)
    finally:
        await conn.close()
    log.info("%s version %d is active (was %d)", name, target.version, old.version)
    seconds = time.perf_counter() - started
    return Rebuilt(name, target.version, target.schema, old.version, seconds, positions)


async def _until_caught_up(
    conn: Conn,
    bootstrap_servers: str,
    topic: str,
    built: Projection,
    task: asyncio.Task[None],
    poll_s: float,
    progress: Callable[[int, int], None] | None,
) -> dict[int, int]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=64 * 1024,
    )  # fmt: skip
    await consumer.start()
    try:
        partitions = await status.topic_partitions(consumer, topic)
        if not partitions:
            raise RebuildRefused(f"topic {topic} does not exist")
        seen: dict[int, int] | None = None
        while True:
            if task.done():
                task.result()  # raises what stopped the projector
                raise RebuildRefused("the rebuild's projector stopped before catching up")
            positions = await partition_offsets(conn, built.name, topic)
            if seen is not None and all(positions.get(p, 0) >= end for p, end in seen.items()):
                return positions
            stopped = await status.stopped_offsets(conn, [built.name], topic)
            if stopped:
                raise RebuildRefused(
                    f"{built.name} stopped on partitions {sorted(stopped)}: see "
                    "`zapflow projections status`; run the rebuild again once fixed (it resumes)"
                )
            seen = await status.log_ends(consumer, topic, partitions, positions)
            if progress is not None:
                progress(sum(min(positions.get(p, 0), e) for p, e in seen.items()),
                         sum(seen.values()))  # fmt: skip
            await asyncio.sleep(poll_s)
    finally:
        await consumer.stop()


def describe(found: Sequence[Version]) -> list[dict[str, object]]:
    return [
        {"projection": v.projection, "version": v.version, "schema": v.schema, "state": v.state}
        for v in found
    ]
