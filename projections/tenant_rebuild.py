"""Rebuild one tenant's rows of a projection from the log while the live projector runs (ADR 0016).

`zapflow projections rebuild NAME --tenant T` replaces T's rows of NAME (the active version of
`conversations`, or `agent_settings`) with what projecting T's events from offset 0 gives, with
the projection's own apply code, and touches no other tenant's row:

1. Checks, nothing written yet: NAME can be rebuilt per tenant, T is in the tenant directory, no
   other rebuild of (NAME, T) runs (a session advisory lock, held to the end).
2. Staging: a schema of its own (`rebuild_NAME_<T as hex>`) with unlogged tables `LIKE` the
   target's (same columns, generated columns, constraints and indexes), writable by the projector
   role only; one left over by a killed rebuild is dropped first. The API role cannot read it.
3. Build: every partition from offset 0 to the log end seen at the start of the round; T's
   records (by key, the tenant: ADR 0002; then by the envelope's tenant) are applied into the
   staging tables in log order, skipping a `tenant_seq` already applied, as the live projector
   does (`projections.batch`). B is the last sequence seen.
4. Swap, in one transaction: the versions lock and the target still active; then the live
   projector's checkpoint rows of the target on T's partitions `FOR UPDATE`, the lock each live
   batch takes first, so none is half-way on those partitions and none starts before the commit;
   L is the target's `projection_tenant_seq` for T. L > B means the live projector applied
   events the staging lacks: the transaction ends having written nothing and step 3 reads on.
   Else, as the projector role with `app.tenant_id` = T (row-level security refuses any other
   tenant's row), T's rows that differ from the staging's or are not there are deleted, the
   staging's rows not in the target inserted, and the sequence set to B, so the live projector
   skips T's events up to B (the staging has them) and applies the later ones on top.
5. The staging schema is dropped, whatever happened.

Readers never see T half-rebuilt (one transaction), and other tenants are never written; their
batches on T's partitions wait for the swap, which costs a comparison of T's rows, not a copy.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from events.envelope import EventEnvelope, decode_event
from projections import agents, checkpoints, conversations, status, versions
from projections.database import Conn, connect
from projections.versions import RebuildRefused, UnknownProjection

log = logging.getLogger("zapflow.projections")

PROJECTOR_ROLE: Final = "zapflow_projector"
_IDLE_S: Final = 10.0
_FETCH_MS: Final = 500
_PROGRESS_S: Final = 0.5
_NAME: Final = re.compile(r"[a-z_][a-z0-9_]*")

type Apply = Callable[[Conn, Sequence[EventEnvelope], str], Awaitable[None]]
"""Project events, in log order, inside the caller's transaction, into the tables of a schema."""


class UnknownTenant(ValueError):
    """Not a tenant of the tenant directory."""


async def _apply_agents(conn: Conn, envelopes: Sequence[EventEnvelope], schema: str) -> None:
    """`agents.apply`, which writes to the search path's tables, into `schema`'s."""
    path = await conn.fetchval(
        "SELECT current_setting('search_path'), set_config('search_path', $1, true)", schema
    )
    for envelope in envelopes:
        await agents.apply(conn, envelope)
    await conn.execute("SELECT set_config('search_path', $1, true)", path)


@dataclass(frozen=True, slots=True)
class _Rebuildable:
    tables: tuple[str, ...]
    apply: Apply


REBUILDABLE: Final[dict[str, _Rebuildable]] = {
    conversations.NAME: _Rebuildable(conversations.TABLES, conversations.apply_batch),
    agents.NAME: _Rebuildable(agents.TABLES, _apply_agents),
}
"""What can be rebuilt per tenant: tenant-owned tables under row-level security."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a projection's rows live now: the active version, or `public` if unversioned."""

    projection: str
    position: str
    """The live projector's name for it: its checkpoints and tenant sequences."""
    schema: str
    version: int | None


@dataclass(frozen=True, slots=True)
class TableChange:
    rows: int
    """The tenant's rows after the swap."""
    deleted: int
    """The tenant's rows that were not what the log gives (wrong or extra): deleted."""
    inserted: int
    """Rows the log gives that were wrong or missing: inserted."""


@dataclass(frozen=True, slots=True)
class TenantRebuilt:
    projection: str
    tenant_id: UUID
    version: int | None
    schema: str
    events: int
    """The tenant's events applied into the staging tables (duplicates skipped)."""
    last_seq: int
    attempts: int
    """Swap attempts: one more each time the live projector was ahead of the staging."""
    tables: dict[str, TableChange]
    seconds: float


def _unknown(name: str) -> str:
    known = ", ".join(sorted(REBUILDABLE))
    return f"unknown projection {name!r} for a per-tenant rebuild; it can rebuild: {known}"


def staging_schema(name: str, tenant_id: UUID) -> str:
    return _ident(f"rebuild_{name}_{tenant_id.hex}")


def _ident(name: str) -> str:
    """`name` as an SQL identifier; only plain lower-case names are ever used."""
    if not _NAME.fullmatch(name) or len(name) > 63:
        raise ValueError(f"not a plain SQL name: {name!r}")
    return name


async def rebuild_tenant(
    bootstrap_servers: str,
    database_url: str,
    name: str,
    tenant_id: UUID,
    topic: str = "zapflow.events",
    progress: Callable[[int, int], None] | None = None,
    *,
    max_attempts: int = 5,
    lock_timeout_s: float = 30.0,
    before_swap: Callable[[int], Awaitable[None]] | None = None,
) -> TenantRebuilt:
    """Replace `tenant_id`'s rows of `name` with a projection of its events (module doc).

    Raises `UnknownProjection` and `UnknownTenant` before anything is written, and
    `RebuildRefused` when it must not go ahead (said why); the rows are then unchanged.
    `before_swap(attempt)` runs before each swap attempt (tests use it to race the live
    projector).
    """
    if name not in REBUILDABLE:
        raise UnknownProjection(_unknown(name))
    kind = REBUILDABLE[name]
    started = time.perf_counter()
    conn = await connect(database_url)
    try:
        if not await conn.fetchval("SELECT to_regclass('tenants') IS NOT NULL"):
            raise RebuildRefused("the database has no tenant directory; run `zapflow setup`")
        if not await conn.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", tenant_id):
            raise UnknownTenant(f"unknown tenant {tenant_id}: not in the tenant directory")
        lock = f"zapflow.tenant_rebuild:{name}:{tenant_id}"
        if not await conn.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", lock):
            raise RebuildRefused(f"a rebuild of {name} for tenant {tenant_id} is already running")
        target = await _target(conn, name)
        schema = staging_schema(name, tenant_id)
        build = _Build(conn, kind, schema, tenant_id, str(tenant_id).encode())
        try:
            await _create_staging(conn, schema, target, kind.tables)
            attempts, tables = await _build_and_swap(
                build, bootstrap_servers, topic, target, progress, max_attempts,
                lock_timeout_s, before_swap,
            )  # fmt: skip
        finally:
            if not conn.is_closed():
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()  # and with it the session lock
    seconds = time.perf_counter() - started
    log.info(
        "%s rebuilt for tenant %s up to seq %d in %.1f s",
        name, tenant_id, build.last_seq, seconds, extra={"tenant_id": str(tenant_id)},
    )  # fmt: skip
    return TenantRebuilt(
        name, tenant_id, target.version, target.schema, build.applied, build.last_seq,
        attempts, tables, seconds,
    )  # fmt: skip


async def _target(conn: Conn, name: str) -> Target:
    if name not in versions.TABLES:
        return Target(name, name, "public", None)
    active = [v for v in await versions.versions(conn, name) if v.state == "active"]
    if not active:
        raise RebuildRefused(f"{name} has no active version; run `zapflow setup`")
    version = active[0]
    position = versions.projection(name, version.version).name
    return Target(name, position, version.schema, version.version)


async def _create_staging(conn: Conn, schema: str, target: Target, tables: Sequence[str]) -> None:
    """Empty tables like the target's, in `schema`, for the projector role only."""
    async with conn.transaction():
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")  # a killed rebuild's
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {PROJECTOR_ROLE}")
        for table in map(_ident, tables):
            await conn.execute(
                f"CREATE UNLOGGED TABLE {schema}.{table} "
                f"(LIKE {_ident(target.schema)}.{table} INCLUDING ALL)"
            )
        await conn.execute(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} "
            f"TO {PROJECTOR_ROLE}"
        )


async def _build_and_swap(
    build: _Build,
    bootstrap_servers: str,
    topic: str,
    target: Target,
    progress: Callable[[int, int], None] | None,
    max_attempts: int,
    lock_timeout_s: float,
    before_swap: Callable[[int], Awaitable[None]] | None,
) -> tuple[int, dict[str, TableChange]]:
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest",
    )  # fmt: skip
    ends_reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", max_partition_fetch_bytes=64 * 1024,
    )  # fmt: skip
    await reader.start()
    try:
        await ends_reader.start()
        partitions = await status.topic_partitions(reader, topic)
        if not partitions:
            raise RebuildRefused(f"topic {topic} does not exist; run `zapflow setup`")
        assigned = [TopicPartition(topic, p) for p in partitions]
        reader.assign(assigned)
        for tp in assigned:
            reader.seek(tp, 0)  # not seek_to_beginning: ListOffsets is unreliable on Tansu
        build.next = dict.fromkeys(partitions, 0)
        for attempt in range(1, max_attempts + 1):
            try:
                ends = await status.log_ends(ends_reader, topic, partitions, build.next)
            except TimeoutError as exc:
                raise RebuildRefused(f"{exc}; is the broker up? nothing replaced") from None
            await _check_log_ends(build.conn, target, topic, ends)
            await build.read(reader, topic, ends, progress)
            if before_swap is not None:
                await before_swap(attempt)
            try:
                swapped = await build.swap(target, topic, lock_timeout_s)
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError) as exc:
                raise RebuildRefused(
                    f"could not lock the live projector's positions of tenant {build.tenant}'s "
                    f"partitions ({type(exc).__name__}: {exc}); nothing replaced (run it again)"
                ) from exc
            if swapped is not None:
                return attempt, swapped
            log.info("the live projector is ahead of the tenant's staging; reading on")
        raise RebuildRefused(
            f"the live projector stayed ahead of the rebuild of tenant {build.tenant} after "
            f"{max_attempts} attempts; nothing was replaced (run it again)"
        )
    finally:
        await reader.stop()
        await ends_reader.stop()


async def _check_log_ends(conn: Conn, target: Target, topic: str, ends: dict[int, int]) -> None:
    """Refuse a log shorter than what the live projector has read: rebuilt from what is left,
    the tenant would lose rows."""
    positions = await checkpoints.partition_offsets(conn, target.position, topic)
    short = {p: (ends[p], at) for p, at in positions.items() if p in ends and ends[p] < at}
    if short:
        p, (end, at) = min(short.items())
        raise RebuildRefused(
            f"{topic} partition {p} ends at offset {end}, before the live projector's position "
            f"{at}: the log was reset and not restored (`zapflow log restore`); nothing replaced"
        )


@dataclass(slots=True)
class _Build:
    """The staging tables of one tenant and how far the log has been read into them."""

    conn: Conn
    kind: _Rebuildable
    schema: str
    tenant: UUID
    key: bytes
    next: dict[int, int] = field(default_factory=dict)
    """partition → next offset to read."""
    last_seq: int = 0
    applied: int = 0
    partitions: set[int] = field(default_factory=set)
    """The partitions that hold the tenant's records (in practice one: ADR 0002)."""
    analyzed: bool = False

    async def read(
        self,
        reader: AIOKafkaConsumer,
        topic: str,
        ends: dict[int, int],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Read every partition up to its offset in `ends` into the staging tables."""
        total, shown = sum(ends.values()), 0.0
        idle_since = time.monotonic()
        while lagging := [
            TopicPartition(topic, p) for p, end in ends.items() if self.next[p] < end
        ]:
            batch = await reader.getmany(*lagging, timeout_ms=_FETCH_MS)
            if not batch:
                if time.monotonic() - idle_since > _IDLE_S:
                    raise RebuildRefused(
                        f"{topic}: no records within {_IDLE_S:.0f} s; is the broker up?"
                    )
                continue
            idle_since = time.monotonic()
            chunk: list[tuple[int, int, EventEnvelope]] = []
            for tp, records in sorted(batch.items()):
                for record in records:
                    if record.offset < self.next[tp.partition]:
                        continue
                    if self.next[tp.partition] == 0 and record.offset > 0:
                        raise RebuildRefused(
                            f"{topic} partition {tp.partition} starts at offset {record.offset}, "
                            "not 0: the log no longer holds the whole history; nothing replaced"
                        )
                    self.next[tp.partition] = record.offset + 1
                    envelope = self._ours(record.key, record.value, tp.partition, record.offset)
                    if envelope is not None:
                        chunk.append((tp.partition, record.offset, envelope))
            await self._apply(chunk)
            if progress is not None and time.monotonic() - shown >= _PROGRESS_S:
                shown = time.monotonic()
                progress(sum(min(self.next[p], end) for p, end in ends.items()), total)
        if progress is not None:
            progress(total, total)

    def _ours(
        self, key: bytes | None, value: bytes | None, partition: int, offset: int
    ) -> EventEnvelope | None:
        """The tenant's event not yet applied that the record holds, if it does."""
        if key != self.key:
            return None  # another tenant's, by the partition key; not decoded at all
        self.partitions.add(partition)
        try:
            envelope = decode_event(value or b"")
        except (ValueError, TypeError) as exc:
            raise RebuildRefused(
                f"the tenant's record at partition {partition} offset {offset} is not an event "
                f"({type(exc).__name__}); the live projector stops on it too; nothing replaced"
            ) from exc
        if envelope.tenant_id != self.tenant or envelope.tenant_seq <= self.last_seq:
            return None  # not the tenant's after all, or a duplicate in the log
        self.last_seq = envelope.tenant_seq
        return envelope

    async def _apply(self, chunk: Sequence[tuple[int, int, EventEnvelope]]) -> None:
        """Apply `chunk` in one transaction; name the event that cannot be applied, if one."""
        if not chunk:
            return
        envelopes = [envelope for _, _, envelope in chunk]
        async with self.conn.transaction():
            await self.conn.execute("SET LOCAL synchronous_commit = off")  # scratch tables
            try:
                async with self.conn.transaction():
                    await self.kind.apply(self.conn, envelopes, self.schema)
            except Exception:
                if self.conn.is_closed():
                    raise
            else:
                self.applied += len(envelopes)
                return
            for partition, offset, envelope in chunk:  # find the poison, then give up
                try:
                    async with self.conn.transaction():
                        await self.kind.apply(self.conn, [envelope], self.schema)
                except Exception as exc:
                    if self.conn.is_closed():
                        raise
                    raise RebuildRefused(
                        f"event {envelope.event_id} ({envelope.type}, seq {envelope.tenant_seq}) "
                        f"at partition {partition} offset {offset} cannot be projected: "
                        f"{status.one_line(f'{type(exc).__name__}: {exc}', 300)}; nothing replaced"
                    ) from exc

    async def swap(
        self, target: Target, topic: str, lock_timeout_s: float
    ) -> dict[str, TableChange] | None:
        """Replace the tenant's rows in one transaction (module doc, step 4); None, having
        written nothing, when the live projector is ahead of the staging tables."""
        if not self.partitions:
            raise RebuildRefused(
                f"{topic} holds no record of tenant {self.tenant}: was the log reset without "
                "`zapflow log restore`? Rebuilt from it the tenant would have no rows; "
                "nothing replaced"
            )
        conn, tables = self.conn, self.kind.tables
        if not self.analyzed:  # fresh tables have no statistics: plan the comparisons well
            for table in tables:
                await conn.execute(f"ANALYZE {self.schema}.{_ident(table)}")
            self.analyzed = True
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
            await conn.execute(versions.LOCK)
            if await _target(conn, target.projection) != target:
                raise RebuildRefused(
                    f"another version of {target.projection} became active during the rebuild "
                    "(a full rebuild, built from the log itself); nothing replaced"
                )
            await _lock_live_positions(conn, target, topic, self.partitions)
            live = await checkpoints.tenant_seqs(conn, [target.position], [self.tenant])
            if live.get((target.position, self.tenant), 0) > self.last_seq:
                return None
            await conn.execute(
                "SELECT set_config('role', $1, true), set_config('app.tenant_id', $2, true)",
                PROJECTOR_ROLE, str(self.tenant),
            )  # fmt: skip
            changes = {
                table: await _replace(conn, target.schema, self.schema, table, self.tenant)
                for table in tables
            }
            await conn.execute("SELECT set_config('role', 'none', true)")
            await checkpoints.save_tenant_seqs(
                conn, {(target.position, self.tenant): self.last_seq}
            )
        return changes


async def _lock_live_positions(
    conn: Conn, target: Target, topic: str, partitions: Collection[int]
) -> None:
    """Lock the live projector's checkpoint rows of `target` on `partitions` until commit: a
    live batch locks them first (`checkpoints.next_offsets(lock=True)`), so while they are held
    none is under way there and none begins."""
    rows = await conn.fetch(
        "SELECT partition FROM projection_checkpoints "
        "WHERE projection = $1 AND topic = $2 AND partition = ANY($3::int[]) "
        "ORDER BY partition FOR UPDATE",
        target.position, topic, sorted(partitions),
    )  # fmt: skip
    missing = sorted(set(partitions) - {row["partition"] for row in rows})
    if missing:
        raise RebuildRefused(
            f"the live projector has not projected {topic} partition {missing[0]} into "
            f"{target.position} yet: start it (`zapflow up` or `zapflow worker projector`) and "
            "run the rebuild again; nothing replaced"
        )


async def _replace(conn: Conn, live: str, staging: str, table: str, tenant: UUID) -> TableChange:
    """Make the tenant's rows of `live`.`table` those of `staging`.`table`, changing only the
    rows that differ (row-level security confines both statements to the tenant)."""
    columns, keys = await _columns(conn, live, table)
    if (await _columns(conn, staging, table)) != (columns, keys):
        raise RebuildRefused(f"the staging table {table} does not match {live}.{table}")
    target, source = f"{_ident(live)}.{_ident(table)}", f"{staging}.{_ident(table)}"
    same_key = " AND ".join(f"s.{k} = t.{k}" for k in keys)
    row_s = ", ".join(f"s.{c}" for c in columns)
    row_t = ", ".join(f"t.{c}" for c in columns)
    deleted = await conn.execute(
        f"DELETE FROM {target} t WHERE t.tenant_id = $1 AND NOT EXISTS ("  # noqa: S608 - our names
        f"SELECT FROM {source} s WHERE {same_key} "
        f"AND ROW({row_s}) IS NOT DISTINCT FROM ROW({row_t}))",
        tenant,
    )
    inserted = await conn.execute(
        f"INSERT INTO {target} ({', '.join(columns)}) SELECT {row_s} FROM {source} s "  # noqa: S608 - our names
        f"WHERE s.tenant_id = $1 AND NOT EXISTS (SELECT FROM {target} t WHERE {same_key})",
        tenant,
    )
    rows = await conn.fetchval(f"SELECT count(*) FROM {source}")  # noqa: S608 - our names
    return TableChange(rows, int(deleted.split()[-1]), int(inserted.split()[-1]))


async def _columns(conn: Conn, schema: str, table: str) -> tuple[list[str], list[str]]:
    """The stored (not generated) columns of a table, in order, and its primary key's."""
    regclass = f"{_ident(schema)}.{_ident(table)}"
    columns = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        regclass,
    )
    keys = await conn.fetch(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = $1::regclass AND i.indisprimary ORDER BY a.attnum",
        regclass,
    )
    return [_ident(r["attname"]) for r in columns], [_ident(r["attname"]) for r in keys]


def describe(rebuilt: TenantRebuilt) -> dict[str, object]:
    """What `zapflow projections rebuild NAME --tenant T` prints."""
    return {
        "projection": rebuilt.projection, "tenant_id": str(rebuilt.tenant_id),
        "version": rebuilt.version, "schema": rebuilt.schema, "events": rebuilt.events,
        "last_seq": rebuilt.last_seq, "attempts": rebuilt.attempts,
        "tables": {
            table: {"rows": c.rows, "deleted": c.deleted, "inserted": c.inserted}
            for table, c in rebuilt.tables.items()
        },
        "seconds": round(rebuilt.seconds, 3),
    }  # fmt: skip
