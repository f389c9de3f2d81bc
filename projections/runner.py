"""The projector: one group-less consumer that feeds every partition of the event log to the
projections, whose positions live in PostgreSQL next to their rows (see `projections.batch`).

- One process owns every partition (manual assignment, no consumer group, nothing committed to
  Kafka): no rebalances, and the development broker's slow group joins do not apply. Each
  partition seeks to the smallest checkpoint of the projections; each projection then skips the
  records below its own checkpoint.
- A record that is not an event, or an event a projection cannot apply, poisons its partition:
  the records before it are committed, the checkpoint stays on it, an error is logged with the
  tenant and event ids, and the partition is paused. Nothing is skipped and the other partitions
  keep going. After a backoff that doubles from `retry_after_s` up to `_MAX_RETRY_S` the
  partition seeks back to its checkpoint and tries again, so a transient failure heals by itself
  and a poison event blocks its partition until the code is fixed (no dead-lettering yet).
- A stopped partition is also recorded in `projection_status` (`projections.status`), and the
  row deleted once the partition projects again, so `zapflow projections status` can report it
  from another process.
- A partition whose log ends before its checkpoint (a development broker restarted with an empty
  log that was not restored) is stopped the same way instead of waiting silently for offsets it
  would then skip. Its end is the fetch response's high watermark, never `end_offsets()`, which
  the development broker gets wrong (ADR 0006).
- A lost database connection is not a poison: the runner raises and its process exits.
- The partitions of one fetch are projected at once, each on a connection of its own from a few
  (`connections`): while PostgreSQL writes one partition's batch, Python decodes the next, and
  the database works on both cores. A partition is never in two batches at once (the next fetch
  waits for every batch of this one), so each partition's order holds; the partitions share no
  rows (the tenant is the partition key), so their transactions do not wait on each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from events.envelope import HEADER_ID, header
from projections import agents, checkpoints, conversations, identity, status, tenants
from projections.batch import (
    ModuleProjection,
    Projection,
    Record,
    checkpoint_names,
    project_up_to_poison,
)
from projections.database import Conn, connect

__all__ = ["PROJECTIONS", "MissingTopic", "ModuleProjection", "Projection", "run_projector"]


PROJECTIONS: Final[tuple[Projection, ...]] = (
    tenants.PROJECTION,
    agents.PROJECTION,
    identity.PROJECTION,
    conversations.Versioned(1),
)
"""What a freshly migrated database's live projector maintains (version 1 of each)."""

_MAX_RETRY_S: Final = 300.0
_POLL_MS: Final = 200
_TOP_UPS: Final = 20
_TOP_UP_MS: Final = 5

log = logging.getLogger("zapflow.projector")


class MissingTopic(Exception):
    """The event topic does not exist (run `zapflow setup`)."""


async def run_projector(
    bootstrap_servers: str,
    database_url: str,
    stop: asyncio.Event,
    projections: Sequence[Projection] | None = None,
    topic: str = "zapflow.events",
    batch_max: int = 1000,
    retry_after_s: float = 5.0,
    drain_s: float = 5.0,
    connections: int = 4,
    archive: bool = True,
    refresh_s: float = 1.0,
) -> None:
    """Project `topic` into PostgreSQL until `stop` is set.

    Without `projections`, the live ones (`projections.versions.live`: the active version of
    each), looked up again every `refresh_s` between fetches so that a rebuilt version swapped
    in is kept current from its own positions. With `archive`, every record is archived too.
    """
    if connections < 1:
        raise ValueError("the projector needs at least one database connection")
    conns: list[Conn] = []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,  # streams.kafka.FETCH_WAIT_MS (projections may not import streams)
    )
    try:
        for _ in range(connections):
            conns.append(await connect(database_url))
        await consumer.start()
        pool = _Connections(conns)
        live = projections is None
        chosen = tuple(projections) if projections is not None else await _live(pool)
        runner = _Runner(pool, consumer, chosen, topic, retry_after_s, archive)
        await runner.assign()
        loop = asyncio.get_running_loop()
        looked = loop.time()
        while not stop.is_set():
            if live and loop.time() - looked >= refresh_s:
                await runner.switch_to(await _live(pool))
                looked = loop.time()
            await runner.resume_due()
            await runner.project_all(await _fetch(consumer, batch_max))
            await runner.check_log_ends()
        # Drain: `zapflow up` stops the projector last, after the decider, so what is in the
        # log now is all there will be; archive it before the in-memory dev broker goes away.
        deadline = asyncio.get_running_loop().time() + drain_s
        while asyncio.get_running_loop().time() < deadline:
            batch = await _fetch(consumer, batch_max)
            if not batch:
                break
            await runner.project_all(batch)
    finally:
        await consumer.stop()
        for conn in conns:
            await conn.close()


async def _live(pool: _Connections) -> tuple[Projection, ...]:
    from projections import versions  # it builds projections from this package's modules

    async with pool.lend() as conn:
        return await versions.live(conn)


class _Connections:
    """A fixed set of connections, each lent to one task at a time."""

    def __init__(self, conns: Sequence[Conn]) -> None:
        self._free: asyncio.Queue[Conn] = asyncio.Queue()
        for conn in conns:
            self._free.put_nowait(conn)

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[Conn]:
        conn = await self._free.get()
        try:
            yield conn
        finally:
            self._free.put_nowait(conn)


async def _fetch(consumer: AIOKafkaConsumer, batch_max: int) -> dict[TopicPartition, list[Record]]:
    """Records per partition: what one poll brings, topped up with what is already fetched.

    A fetch response can carry as little as one producer batch per partition (the development
    broker answers that way), and each projected batch costs a fixed number of database round
    trips; with a backlog, gathering up to `batch_max` per partition first is what makes the
    projector fast.
    """
    gathered: dict[TopicPartition, list[Record]] = {}
    batch = await consumer.getmany(timeout_ms=_POLL_MS, max_records=batch_max)
    for _ in range(_TOP_UPS):
        if not batch:
            break
        for tp, records in batch.items():
            gathered.setdefault(tp, []).extend(records)
        if sum(len(r) for r in gathered.values()) >= batch_max * max(len(gathered), 1):
            break
        batch = await consumer.getmany(timeout_ms=_TOP_UP_MS, max_records=batch_max)
    return gathered


@dataclass(slots=True)
class _Runner:
    """Which partitions run, where each was sent, and when a stopped one is retried."""

    conns: _Connections
    consumer: AIOKafkaConsumer
    projections: tuple[Projection, ...]
    topic: str
    retry_after_s: float
    archive: bool
    failures: dict[TopicPartition, int] = field(default_factory=dict)
    resume_at: dict[TopicPartition, float] = field(default_factory=dict)
    sought: dict[TopicPartition, tuple[int, int]] = field(default_factory=dict)
    """Partitions whose log end is not yet checked: (checkpoint, when sought, epoch ms)."""
    recorded: dict[TopicPartition, int] = field(default_factory=dict)
    """Partitions with a stop in `projection_status` (by this process or an earlier one): the
    offset it stopped at, which the partition must reach again to count as running."""

    async def assign(self) -> None:
        partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            await self.consumer._client.force_metadata_update()  # aiokafka has no public refresh
            partitions = self.consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise MissingTopic(f"topic {self.topic} does not exist")
        assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        self.consumer.assign(assigned)
        for tp in assigned:
            await self._seek_to_checkpoint(tp)
        positions = checkpoint_names(self.projections, self.archive)
        async with self.conns.lend() as conn:
            stopped = await status.stopped_offsets(conn, positions, self.topic)
        self.recorded = {tp: stopped[tp.partition] for tp in assigned if tp.partition in stopped}
        names = [projection.name for projection in self.projections]
        log.info("projecting %s (%d partitions) into %s", self.topic, len(assigned), names)

    async def switch_to(self, projections: tuple[Projection, ...]) -> None:
        """Maintain `projections` from now on, each from its own positions (a version swapped
        in by a rebuild); records already fetched for the old ones are read again."""
        if [p.name for p in projections] == [p.name for p in self.projections]:
            return
        log.info(
            "now projecting %s (was %s)",
            [p.name for p in projections], [p.name for p in self.projections],
        )  # fmt: skip
        self.projections = projections
        for tp in self.consumer.assignment():
            if tp not in self.resume_at:  # a stopped partition seeks when it is retried
                await self._seek_to_checkpoint(tp)

    async def _seek_to_checkpoint(self, tp: TopicPartition) -> None:
        names = checkpoint_names(self.projections, self.archive)
        async with self.conns.lend() as conn:
            offsets = await checkpoints.next_offsets(conn, names, tp.topic, tp.partition)
        offset = min(offsets.values(), default=0)
        self.consumer.seek(tp, offset)
        if offset > 0:
            self.sought[tp] = (offset, int(time.time() * 1000))

    async def resume_due(self) -> None:
        now = asyncio.get_running_loop().time()
        for tp, when in list(self.resume_at.items()):
            if when <= now:
                del self.resume_at[tp]
                await self._seek_to_checkpoint(tp)
                self.consumer.resume(tp)

    async def check_log_ends(self) -> None:
        """Stop each partition whose first fetch since its seek shows a log ending too early.

        A log ending exactly at the checkpoint has nothing to project and nothing wrong (say,
        restored after such a stop): the partition counts as running again.
        """
        for tp, (offset, sought_ms) in list(self.sought.items()):
            if (self.consumer.last_poll_timestamp(tp) or 0) < sought_ms:
                continue  # no fetch response since the seek yet
            del self.sought[tp]
            end = self.consumer.highwater(tp)
            if end is not None and end == offset:
                await self._running(tp, end)
            if end is not None and end < offset:
                attempt, delay = self._stop(tp)
                log.error(
                    "%s partition %d ends at offset %d, before the checkpoint %d: was the log "
                    "reset without being restored? partition stopped, retry %d in %.1f s",
                    *(tp.topic, tp.partition, end, offset, attempt, delay),
                )
                error = f"the log ends at offset {end}, before the checkpoint {offset}"
                await self._record(tp, status.Stop(offset, error, attempt))

    async def project_all(self, batch: dict[TopicPartition, list[Record]]) -> None:
        """Project each partition's records at once; the first failure (a lost connection)
        cancels the others and is raised as itself."""
        if len(batch) <= 1:
            for tp, records in batch.items():
                await self.project(tp, records)
            return
        try:
            async with asyncio.TaskGroup() as group:
                for tp, records in batch.items():
                    group.create_task(self.project(tp, records))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def project(self, tp: TopicPartition, records: Sequence[Record]) -> None:
        if tp in self.resume_at or not records:
            return  # fetched before the partition was stopped: it will be read again
        async with self.conns.lend() as conn:
            poison = await project_up_to_poison(conn, self.projections, tp, records, self.archive)
        if poison is None:
            self.failures.pop(tp, None)
            await self._running(tp, records[-1].offset + 1)
            return
        attempt, delay = self._stop(tp)
        record, envelope = poison.record, poison.envelope
        tenant_id = envelope.tenant_id if envelope else _text(record.key)
        event_id = envelope.event_id if envelope else header(record.headers, HEADER_ID)
        log.error(
            "%s failed on %s partition %d offset %d; partition stopped, retry %d in %.1f s",
            *(poison.projection, record.topic, record.partition, record.offset, attempt, delay),
            exc_info=poison.__cause__,
            extra={"tenant_id": tenant_id, "event_id": event_id},
        )
        cause = poison.__cause__
        stop = status.Stop(
            offset=record.offset,
            error=f"{poison.projection} failed: {type(cause).__name__}: {cause}",
            attempts=attempt,
            event_id=status.uuid_or_none(event_id),
            tenant_id=status.uuid_or_none(tenant_id),
        )
        await self._record(tp, stop)

    def _stop(self, tp: TopicPartition) -> tuple[int, float]:
        """Pause `tp` until its next retry; returns the attempt number and the delay."""
        attempt = self.failures[tp] = self.failures.get(tp, 0) + 1
        delay = min(self.retry_after_s * 2 ** (attempt - 1), _MAX_RETRY_S)
        self.consumer.pause(tp)
        self.sought.pop(tp, None)
        self.resume_at[tp] = asyncio.get_running_loop().time() + delay
        return attempt, delay

    async def _record(self, tp: TopicPartition, stop: status.Stop) -> None:
        """Make the stop visible to other processes (`zapflow projections status`)."""
        names = checkpoint_names(self.projections, self.archive)
        async with self.conns.lend() as conn:
            await status.record_stop(conn, names, tp.topic, tp.partition, stop)
        self.recorded[tp] = stop.offset

    async def _running(self, tp: TopicPartition, reached: int) -> None:
        """Delete the recorded stop of `tp`, if any, once it projects up to `reached` again.

        Records below the stop do not count: after a log reset the partition re-reads them
        from the beginning, harmlessly, and is still stopped.
        """
        stopped = self.recorded.get(tp)
        if stopped is not None and reached >= stopped:
            names = checkpoint_names(self.projections, self.archive)
            async with self.conns.lend() as conn:
                await status.clear_stop(conn, names, tp.topic, tp.partition)
            del self.recorded[tp]


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode(errors="replace")
