"""One partition batch, projected in ONE transaction together with the projections' positions.

For each projection, every event at or after that projection's checkpoint whose `tenant_seq` is
above the last one it applied for that tenant is applied (duplicates in the log are skipped);
the sequences are recorded and the checkpoints move to the batch's last offset + 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiokafka import ConsumerRecord, TopicPartition

from events.envelope import EventEnvelope, decode_event
from projections import archive, checkpoints
from projections.database import Conn

type Record = ConsumerRecord[bytes, bytes]


class Projection(Protocol):
    """A read model: a stable name (its checkpoints' key) and an idempotent `apply`."""

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


async def project_up_to_poison(
    conn: Conn, projections: Sequence[Projection], tp: TopicPartition, records: Sequence[Record]
) -> Poison | None:
    """Project `records`, or, when one is poison, those before it; returns that poison.

    The failed transaction is rolled back and the records before the poison are projected again
    in a transaction of their own, so the checkpoint ends exactly at the poison.
    """
    try:
        await project(conn, projections, tp, records)
    except Poison as poison:
        if conn.is_closed():
            raise ConnectionError("lost the database connection") from poison.__cause__
        if poison.index == 0:
            return poison
        return await project_up_to_poison(conn, projections, tp, records[: poison.index]) or poison
    return None


async def project(
    conn: Conn, projections: Sequence[Projection], tp: TopicPartition, records: Sequence[Record]
) -> None:
    """Project `records` of one partition, all or nothing; raises `Poison` at the first failure."""
    await archive_records(conn, tp, records)
    envelopes = [_decode(index, record) for index, record in enumerate(records)]
    names = [projection.name for projection in projections]
    async with conn.transaction():
        starts = await checkpoints.next_offsets(conn, names, tp.topic, tp.partition, lock=True)
        seqs = await checkpoints.tenant_seqs(conn, names, {e.tenant_id for e in envelopes})
        applied: checkpoints.TenantSeqs = {}
        for projection in projections:
            for index, (record, envelope) in enumerate(zip(records, envelopes, strict=True)):
                key = (projection.name, envelope.tenant_id)
                if record.offset < starts[projection.name]:
                    continue
                if envelope.tenant_seq <= seqs.get(key, 0):
                    continue
                try:
                    await projection.apply(conn, envelope)
                except Exception as exc:
                    raise Poison(index, projection.name, record, envelope) from exc
                seqs[key] = applied[key] = envelope.tenant_seq
        await checkpoints.save_tenant_seqs(conn, applied)
        await checkpoints.save_next_offset(
            conn, names, tp.topic, tp.partition, records[-1].offset + 1
        )


async def archive_records(conn: Conn, tp: TopicPartition, records: Sequence[Record]) -> None:
    """Archive every record not yet archived, in a transaction of its own with its checkpoint.

    Ahead of and apart from the projections: a record no projection can apply (or that is not
    even an event) is still archived, so restoring the log never stops at it. Duplicates are
    archived too: the archive mirrors the log, offsets included.
    """
    async with conn.transaction():
        (start,) = (
            await checkpoints.next_offsets(conn, [archive.NAME], tp.topic, tp.partition, lock=True)
        ).values()
        fresh = [r for r in records if r.offset >= start]
        if not fresh:
            return
        await archive.store(
            conn, tp.topic, tp.partition,
            [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in fresh],
            [_decoded_or_none(r) for r in fresh],
        )  # fmt: skip
        await checkpoints.save_next_offset(
            conn, [archive.NAME], tp.topic, tp.partition, fresh[-1].offset + 1
        )


def _decoded_or_none(record: Record) -> EventEnvelope | None:
    try:
        return decode_event(record.value)
    except (ValueError, TypeError):
        return None


def checkpoint_names(projections: Sequence[Projection]) -> list[str]:
    """Every position the projector keeps per partition: the archive's and each projection's."""
    return [archive.NAME, *(projection.name for projection in projections)]


def _decode(index: int, record: Record) -> EventEnvelope:
    try:
        return decode_event(record.value)
    except (ValueError, TypeError) as exc:  # pydantic's and orjson's errors are ValueErrors
        raise Poison(index, "decode_event", record, None) from exc
