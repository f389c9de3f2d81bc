"""One partition batch, projected in ONE transaction together with the projections' positions.

For each projection, every event at or after that projection's checkpoint whose `tenant_seq` is
above the last one it applied for that tenant is applied (duplicates in the log are skipped);
the sequences are recorded and the checkpoints move to the batch's last offset + 1.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import ConsumerRecord, TopicPartition

from events.envelope import EventEnvelope, decode_event
from projections import archive as archive_module
from projections import checkpoints
from projections.database import Conn

log = logging.getLogger("zapflow.projector")

type Record = ConsumerRecord[bytes, bytes]


class Projection(Protocol):
    """A read model: a stable name (its checkpoints' key) and an idempotent `apply`.

    A projection may also offer `apply_batch(conn, envelopes)`, the same effect for many events
    at once; the runner then uses it and falls back to `apply` only to locate a poison event.
    And it may name the event `types` it reads (a frozenset of type names): the others are then
    never handed to it and cost it nothing, not even a sequence row (its sequence per tenant
    only has to skip duplicates of what it reads).
    """

    @property
    def name(self) -> str: ...

    async def apply(self, conn: Conn, envelope: EventEnvelope) -> None: ...


class Poison(Exception):
    """Record `index` of a batch could not be decoded (`envelope` None) or applied."""

    def __init__(
        self, index: int, projection: str, record: Record, envelope: EventEnvelope | None
    ) -> None:
        super().__init__(index, projection)
        self.index = index
        self.projection = projection
        self.record = record
        self.envelope = envelope


@dataclass(frozen=True, slots=True)
class ModuleProjection:
    """A projection module (`NAME` and `apply`) as a `Projection`."""

    name: str
    apply_event: Callable[[Conn, EventEnvelope], Awaitable[None]] = field(repr=False)
    apply_events: Callable[[Conn, Sequence[EventEnvelope]], Awaitable[None]] | None = field(
        default=None, repr=False
    )
    types: frozenset[str] | None = None
    """The event types it reads; None: every event is handed to it."""

    async def apply(self, conn: Conn, envelope: EventEnvelope) -> None:
        await self.apply_event(conn, envelope)

    async def apply_batch(self, conn: Conn, envelopes: Sequence[EventEnvelope]) -> None:
        if self.apply_events is None:
            for envelope in envelopes:
                await self.apply_event(conn, envelope)
        else:
            await self.apply_events(conn, envelopes)


async def project_up_to_poison(
    conn: Conn,
    projections: Sequence[Projection],
    tp: TopicPartition,
    records: Sequence[Record],
    archive: bool = True,
) -> Poison | None:
    """Project `records`, or, when one is poison, those before it; returns that poison.

    The failed transaction is rolled back and the records before the poison are projected again
    in a transaction of their own, so the checkpoint ends exactly at the poison.
    """
    try:
        await project(conn, projections, tp, records, archive)
    except Poison as poison:
        if conn.is_closed():
            raise ConnectionError("lost the database connection") from poison.__cause__
        if poison.index == 0:
            return poison
        before = records[: poison.index]
        return await project_up_to_poison(conn, projections, tp, before, archive) or poison
    return None


async def project(
    conn: Conn,
    projections: Sequence[Projection],
    tp: TopicPartition,
    records: Sequence[Record],
    archive: bool = True,
) -> None:
    """Project `records` of one partition, all or nothing; raises `Poison` at the first failure.
    With `archive`, they are archived first (the live projector; a rebuild does not)."""
    decoded = [_decoded_or_none(record) for record in records]  # once, for both uses
    if archive:
        await archive_records(conn, tp, records, decoded)
    envelopes = [
        _decode(index, record, e)
        for index, (record, e) in enumerate(zip(records, decoded, strict=True))
    ]
    names = [projection.name for projection in projections]
    async with conn.transaction():
        # Read models and their checkpoints commit together, so a commit lost in a database
        # crash loses both and the batch is projected again from the log: nothing here needs
        # to wait for its WAL flush (the archive, a copy of the log, still does).
        await conn.execute("SET LOCAL synchronous_commit = off")
        starts = await checkpoints.next_offsets(conn, names, tp.topic, tp.partition, lock=True)
        seqs = await checkpoints.tenant_seqs(conn, names, {e.tenant_id for e in envelopes})
        applied: checkpoints.TenantSeqs = {}
        for projection in projections:
            todo: list[tuple[int, Record, EventEnvelope]] = []
            types: frozenset[str] | None = getattr(projection, "types", None)
            for index, (record, envelope) in enumerate(zip(records, envelopes, strict=True)):
                key = (projection.name, envelope.tenant_id)
                if record.offset < starts[projection.name]:
                    continue
                if types is not None and envelope.type not in types:
                    continue
                if envelope.tenant_seq <= seqs.get(key, 0):
                    continue
                todo.append((index, record, envelope))
                seqs[key] = applied[key] = envelope.tenant_seq
            await _apply(conn, projection, todo)
        await checkpoints.save_tenant_seqs(conn, applied)
        await checkpoints.save_next_offset(
            conn, names, tp.topic, tp.partition, records[-1].offset + 1
        )


async def _apply(
    conn: Conn, projection: Projection, todo: Sequence[tuple[int, Record, EventEnvelope]]
) -> None:
    """Apply `todo` in order: in one go when the projection can, else (or to find the poison
    after a failed go) one event at a time; raises `Poison` naming the event that fails."""
    apply_batch = getattr(projection, "apply_batch", None)
    if apply_batch is not None and len(todo) > 1:
        try:
            async with conn.transaction():  # a savepoint: a failure leaves nothing behind
                await apply_batch(conn, [envelope for _, _, envelope in todo])
        except Exception:
            if conn.is_closed():
                raise
        else:
            return
    for index, record, envelope in todo:
        try:
            await projection.apply(conn, envelope)
        except Exception as exc:
            raise Poison(index, projection.name, record, envelope) from exc


async def archive_records(
    conn: Conn,
    tp: TopicPartition,
    records: Sequence[Record],
    decoded: Sequence[EventEnvelope | None] | None = None,
) -> None:
    """Archive every record not yet archived, in a transaction of its own with its checkpoint.

    Ahead of and apart from the projections: a record no projection can apply (or that is not
    even an event) is still archived, so restoring the log never stops at it. Duplicates are
    archived too: the archive mirrors the log, offsets included.
    """
    async with conn.transaction():
        (start,) = (
            await checkpoints.next_offsets(
                conn, [archive_module.NAME], tp.topic, tp.partition, lock=True
            )
        ).values()
        if decoded is None:
            decoded = [_decoded_or_none(r) for r in records]
        fresh = [(r, e) for r, e in zip(records, decoded, strict=True) if r.offset >= start]
        if not fresh:
            return
        await archive_module.store(
            conn, tp.topic, tp.partition,
            [(r.offset, r.key, r.value, r.headers, r.timestamp) for r, _ in fresh],
            [e for _, e in fresh],
        )  # fmt: skip
        await checkpoints.save_next_offset(
            conn, [archive_module.NAME], tp.topic, tp.partition, fresh[-1][0].offset + 1
        )


def _decoded_or_none(record: Record) -> EventEnvelope | None:
    try:
        return decode_event(record.value)
    except (ValueError, TypeError):
        return None


def checkpoint_names(projections: Sequence[Projection], archive: bool = True) -> list[str]:
    """Every position the projector keeps per partition: the archive's and each projection's."""
    return [archive_module.NAME] * archive + [projection.name for projection in projections]


def _decode(index: int, record: Record, decoded: EventEnvelope | None) -> EventEnvelope:
    if decoded is not None:
        return decoded
    try:
        return decode_event(record.value)  # fails again, now with the cause attached
    except (ValueError, TypeError) as exc:  # pydantic's and orjson's errors are ValueErrors
        raise Poison(index, "decode_event", record, None) from exc
