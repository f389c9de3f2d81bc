"""Where each projection stands per partition: checkpoint, log end, lag, and whether it stopped.

The projector pauses a partition it cannot project (`projections.runner`) in memory; it also
records the stop in `projection_status` so that another process can report it, and deletes the
row once the partition projects again. A report joins those rows with the checkpoints and with
each partition's log end, which is the high watermark of a fetch response: never
`end_offsets()`, which the development broker answers with the last batch's base offset + 1
(ADR 0006), so lag computed from it would hide the newest records.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal
from uuid import UUID

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

from projections.checkpoints import partition_offsets
from projections.database import Conn

type State = Literal["running", "stopped", "not started"]

ERROR_MAX_CHARS: Final = 1000
_FETCH_MS: Final = 500

_RECORD_STOP: Final = """
INSERT INTO projection_status
    (projection, topic, partition, stopped_offset, error, event_id, tenant_id, attempts)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (projection, topic, partition) DO UPDATE
SET stopped_at = CASE WHEN projection_status.stopped_offset = EXCLUDED.stopped_offset
                      THEN projection_status.stopped_at ELSE now() END,
    stopped_offset = EXCLUDED.stopped_offset,
    error = EXCLUDED.error,
    event_id = EXCLUDED.event_id,
    tenant_id = EXCLUDED.tenant_id,
    attempts = EXCLUDED.attempts,
    updated_at = now()
"""

_CLEAR: Final = """
DELETE FROM projection_status WHERE projection = ANY($1::text[]) AND topic = $2 AND partition = $3
"""

_STOPS: Final = """
SELECT projection, partition, stopped_offset, error, event_id, tenant_id, attempts, stopped_at
FROM projection_status WHERE projection = ANY($1::text[]) AND topic = $2
"""


@dataclass(frozen=True, slots=True)
class Stop:
    """Why a partition stopped: where, the error in one line, and the record's ids if known."""

    offset: int
    error: str
    attempts: int
    event_id: UUID | None = None
    tenant_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One projection on one partition, as `zapflow projections status` prints it."""

    projection: str
    partition: int
    next_offset: int
    log_end: int
    lag: int
    state: State
    stopped_offset: int | None = None
    error: str | None = None
    event_id: UUID | None = None
    tenant_id: UUID | None = None
    attempts: int | None = None
    stopped_at: datetime | None = None


def one_line(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """`text` on one line (a validation error spans several) and at most `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def uuid_or_none(value: UUID | str | None) -> UUID | None:
    """An id read from a record that may be garbage (key, header): a bad one is unknown."""
    if value is None or isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except ValueError:
        return None


async def record_stop(
    conn: Conn, names: Sequence[str], topic: str, partition: int, stop: Stop
) -> None:
    """Mark `partition` stopped for every position in `names`, in a transaction of its own."""
    values = (stop.offset, one_line(stop.error), stop.event_id, stop.tenant_id, stop.attempts)
    rows = [(name, topic, partition, *values) for name in names]
    async with conn.transaction():
        await conn.executemany(_RECORD_STOP, rows)


async def clear_stop(conn: Conn, names: Sequence[str], topic: str, partition: int) -> None:
    """Mark `partition` running again (no row) for every position in `names`."""
    async with conn.transaction():
        await conn.execute(_CLEAR, list(names), topic, partition)


async def stopped_offsets(conn: Conn, names: Sequence[str], topic: str) -> dict[int, int]:
    """partition → where it stopped, for each partition of `topic` stopped for any of `names`."""
    stopped: dict[int, int] = {}
    for row in await conn.fetch(_STOPS, list(names), topic):
        partition, offset = row["partition"], row["stopped_offset"]
        stopped[partition] = min(stopped.get(partition, offset), offset)
    return stopped


async def read(
    conn: Conn, topic: str, ends: Mapping[int, int], names: Sequence[str]
) -> list[PartitionStatus]:
    """Each of `names` on each partition of `ends` (partition → log end offset)."""
    rows = await conn.fetch(_STOPS, list(names), topic)
    stops = {(row["projection"], row["partition"]): row for row in rows}
    found = []
    for name in names:
        offsets = await partition_offsets(conn, name, topic)
        for partition, end in sorted(ends.items()):
            stop = stops.get((name, partition))
            found.append(_status(name, partition, offsets.get(partition), end, stop))
    return found


def _status(
    name: str, partition: int, checkpoint: int | None, end: int, stop: asyncpg.Record | None
) -> PartitionStatus:
    next_offset = checkpoint or 0
    lag = max(end - next_offset, 0)  # a log reset below the checkpoint is a stop, not lag
    if stop is None:
        state: State = "not started" if checkpoint is None else "running"
        return PartitionStatus(name, partition, next_offset, end, lag, state)
    return PartitionStatus(
        name, partition, next_offset, end, lag, "stopped",
        stopped_offset=stop["stopped_offset"], error=stop["error"],
        event_id=_uuid(stop["event_id"]), tenant_id=_uuid(stop["tenant_id"]),
        attempts=stop["attempts"], stopped_at=stop["stopped_at"],
    )  # fmt: skip


def _uuid(value: UUID | None) -> UUID | None:
    """A plain `UUID` for asyncpg's subclass, which orjson does not serialise."""
    return None if value is None else UUID(bytes=value.bytes)


async def starts(conn: Conn, topic: str, names: Sequence[str]) -> dict[int, int]:
    """partition → the smallest position of `names`, where the projector reads from."""
    by_name = [await partition_offsets(conn, name, topic) for name in names]
    partitions = {partition for offsets in by_name for partition in offsets}
    return {p: min(offsets.get(p, 0) for offsets in by_name) for p in partitions}


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The partitions of `topic` (none when it does not exist)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()  # aiokafka has no public refresh
        partitions = consumer.partitions_for_topic(topic)
    return sorted(partitions or ())


async def log_ends(
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: Sequence[int],
    near: Mapping[int, int],
    timeout_s: float = 10.0,
) -> dict[int, int]:
    """partition → log end offset, from one fetch response per partition.

    `consumer` is started and group-less; each partition is read from just before `near`
    (its checkpoint), so a partition with records answers at once with few bytes, and an empty
    one answers with end 0. A log now shorter than that (reset) is read from its beginning.
    """
    assigned = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(assigned)
    for tp in assigned:
        consumer.seek(tp, max(near.get(tp.partition, 0) - 1, 0))
    deadline = time.monotonic() + timeout_s
    while missing := [tp for tp in assigned if consumer.highwater(tp) is None]:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic}: no fetch response for {len(missing)} partitions")
        await consumer.getmany(*missing, timeout_ms=_FETCH_MS)
    return {tp.partition: consumer.highwater(tp) for tp in assigned}


async def report(
    conn: Conn,
    consumer: AIOKafkaConsumer,
    topic: str,
    partitions: Sequence[int],
    names: Sequence[str],
    timeout_s: float = 10.0,
) -> list[PartitionStatus]:
    """`read` over the log ends that `consumer` fetches now."""
    ends = await log_ends(consumer, topic, partitions, await starts(conn, topic, names), timeout_s)
    return await read(conn, topic, ends, names)
