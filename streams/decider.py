"""The decider: consumes `zapflow.commands`, the only writer of `zapflow.events` (ADR 0003).

Per fetched batch and partition: decide every command against the tenant's book, seal the
events into the tenant's chain, append them (each command's events in one record batch, so a
command's events land together or not at all), await acks=all, and only then commit the
command offsets. If appending fails, the partition's books are dropped and rebuilt from the log,
and the consumer seeks back to the last commit: nothing is decided against a state the log does
not have. On assignment, a partition's books are rebuilt by reading the
same partition of `zapflow.events` (both topics are keyed by tenant with equal partition counts).

A command that cannot be decoded, or whose decision raises anything but a business rejection,
fails deterministically: it goes to `zapflow.dlq` with the error at once (retrying a pure
function cannot help) and the tenant's later commands continue. Business rejections become
`CommandRejected` events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.structs import OffsetAndMetadata

from events.chain import head_of, seal
from events.envelope import EventEnvelope, decode_command, encode_event
from streams import kafka
from streams.log import read_partition
from streams.tenant_book import TenantBook
from streams.topics import COMMANDS, DLQ, EVENTS

log = logging.getLogger("zapflow.decider")
GROUP = "zapflow-decider-v1"
_BATCH_BYTES = 1_000_000


@dataclass(slots=True)
class _PartitionBooks:
    books: dict[UUID, TenantBook] = field(default_factory=dict)

    def book(self, tenant_id: UUID) -> TenantBook:
        found = self.books.get(tenant_id)
        if found is None:
            found = self.books[tenant_id] = TenantBook(tenant_id)
        return found


@dataclass(frozen=True, slots=True)
class Topics:
    commands: str = COMMANDS
    events: str = EVENTS
    dlq: str = DLQ
    group: str = GROUP


class Decider(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, bootstrap_servers: str, producer: AIOKafkaProducer, topics: Topics) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.producer = producer
        self.topics = topics
        self.partitions: dict[int, _PartitionBooks] = {}
        # aiokafka runs rebalance callbacks in its coordinator task, concurrently with our
        # loop: without this lock a partition could be rebuilt from the log while a batch's
        # append is in flight, and the next command would be decided on a stale head (a fork).
        self.lock = asyncio.Lock()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self.lock:
            for tp in revoked:
                self.partitions.pop(tp.partition, None)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        async with self.lock:
            for tp in assigned:
                await self.rebuild(tp.partition)

    async def rebuild(self, partition: int) -> None:
        books = _PartitionBooks()
        reader = kafka.groupless_consumer(self.bootstrap_servers)
        await reader.start()
        count = 0
        try:
            async for _position, envelope in read_partition(reader, self.topics.events, partition):
                count += books.book(envelope.tenant_id).apply(envelope)
        finally:
            await reader.stop()
        self.partitions[partition] = books
        heads = {str(t)[:8]: b.head.tenant_seq for t, b in books.books.items()}
        log.info("partition %d rebuilt from %d events, heads %s", partition, count, heads)

    async def handle(self, tp: TopicPartition, records: list[ConsumerRecord]) -> bool:
        """Decide and append a batch; False (nothing done) for a partition no longer ours.

        The books take each command's events as it is decided, before the append is acked.
        If anything fails before the ack, the partition's books are dropped (the caller rebuilds
        them from the log), so no command is ever decided on state the log does not hold.
        Deciding in place rather than on copies keeps a batch's cost independent of how many
        conversations and remembered command ids a tenant has.
        """
        books = self.partitions.get(tp.partition)
        if books is None:
            return False  # revoked after this batch was fetched: its new owner decides these
        try:
            per_command: list[list[EventEnvelope]] = []
            for record in records:
                envelopes = await self._decide(books, record)
                if envelopes:
                    per_command.append(envelopes)
            await self._append(tp.partition, per_command)
        except BaseException:
            self.partitions.pop(tp.partition, None)
            raise
        if log.isEnabledFor(logging.DEBUG):
            seqs = [(str(e.tenant_id)[:8], e.tenant_seq) for c in per_command for e in c]
            log.debug("partition %d offsets %d..%d appended %s", tp.partition,
                      records[0].offset, records[-1].offset, seqs[:1] + seqs[-1:])  # fmt: skip
        return True

    async def _decide(self, books: _PartitionBooks, record: ConsumerRecord) -> list[EventEnvelope]:
        try:
            command = decode_command(record.value)
            _check_routing(record, command.tenant_id)
            book = books.book(command.tenant_id)
            recorded_at = datetime.fromtimestamp(record.timestamp / 1000, UTC)
            sealed, head = [], book.head
            for draft, event in book.decide(command, recorded_at):
                envelope = seal(draft, head)
                head = head_of(envelope)
                sealed.append((envelope, event))
        except Exception as exc:  # noqa: BLE001 - a poison command must not block its tenant
            await self._dead_letter(record, exc)
            return []
        for envelope, event in sealed:  # only once the whole command is sealed
            book.record(envelope, event)
        return [envelope for envelope, _ in sealed]

    async def _append(self, partition: int, per_command: list[list[EventEnvelope]]) -> None:
        """Append in record batches, each acked before the next is sent: a failed batch can
        never be followed into the log by a later one (that would leave a gap in a chain)."""
        batch = self.producer.create_batch()
        for envelopes in per_command:
            encoded = [encode_event(envelope) for envelope in envelopes]
            # A generous estimate (record overhead ≤ 64 bytes, headers counted in full) so a
            # command's events never straddle two batches.
            size = sum(
                len(key) + len(value) + 64 + sum(len(name) + len(raw) + 8 for name, raw in headers)
                for key, value, headers in encoded
            )
            if batch.record_count() and batch.size() + size > _BATCH_BYTES:
                await self._send(batch, partition)
                batch = self.producer.create_batch()
            for key, value, headers in encoded:
                metadata = batch.append(key=key, value=value, timestamp=None, headers=headers)
                assert metadata is not None, "an event larger than the batch limit"
        if batch.record_count():
            await self._send(batch, partition)

    async def _send(self, batch: BatchBuilder, partition: int) -> None:
        await (await self.producer.send_batch(batch, self.topics.events, partition=partition))

    async def _dead_letter(self, record: ConsumerRecord, exc: Exception) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        log.error("command dead-lettered: %s", reason.splitlines()[0],
                  extra={"tenant_id": (record.key or b"").decode(errors="replace")})  # fmt: skip
        headers = [
            ("zf-error", reason.encode()),
            ("zf-source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            *record.headers,
        ]
        await self.producer.send_and_wait(
            self.topics.dlq, record.value, key=record.key, headers=headers
        )


def _check_routing(record: ConsumerRecord, tenant_id: UUID) -> None:
    if record.key != str(tenant_id).encode():
        # Misrouted: deciding it here would start a second chain for the tenant elsewhere.
        raise ValueError("the record key is not the command's tenant_id")


async def run_decider(
    bootstrap_servers: str,
    stop: asyncio.Event,
    *,
    instance_id: str | None = None,
    session_timeout_ms: int = 10_000,
    max_records: int = 5000,
    topics: Topics = Topics(),
    on_commit: Callable[[int], None] | None = None,
    drain_s: float = 5.0,
) -> None:
    """Run until `stop` is set; `on_commit(n)` hears of every committed batch of n commands."""
    producer = kafka.producer(bootstrap_servers, max_batch_size=_BATCH_BYTES, linger_ms=0)
    await producer.start()
    decider = Decider(bootstrap_servers, producer, topics)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=topics.group,
        group_instance_id=instance_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=session_timeout_ms,
        heartbeat_interval_ms=max(500, session_timeout_ms // 5),
        max_poll_records=max_records,
        fetch_max_wait_ms=kafka.FETCH_WAIT_MS,
    )
    consumer.subscribe([topics.commands], listener=decider)
    await consumer.start()
    drain_until: float | None = None
    try:
        while True:
            if stop.is_set() and drain_until is None:
                # Decide what was already accepted before leaving: with the in-memory
                # development broker, commands left undecided would be lost with it.
                drain_until = asyncio.get_running_loop().time() + drain_s
            batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
            if drain_until is not None and (
                not batches or asyncio.get_running_loop().time() > drain_until
            ):
                break
            if not batches:
                continue
            async with decider.lock:
                # Partitions are independent: while one waits for its acks, others decide.
                owned = {tp: rs for tp, rs in batches.items() if tp in consumer.assignment()}
                done = await asyncio.gather(
                    *(_process(consumer, decider, tp, records) for tp, records in owned.items())
                )
                offsets = {tp: OffsetAndMetadata(owned[tp][-1].offset + 1, "") for tp in done if tp}
                if offsets:
                    try:
                        await consumer.commit(offsets)
                    except CommitFailedError as exc:
                        # The group moved on (a rebalance, an expired session): the records
                        # come again to whoever owns them, and are recognised by command id.
                        log.warning("commit refused, batch will be re-delivered: %s", exc)
                        offsets = {}
            if on_commit is not None:
                on_commit(sum(len(owned[tp]) for tp in offsets))
    finally:
        await consumer.stop()
        await producer.stop()


async def _process(
    consumer: AIOKafkaConsumer, decider: Decider, tp: TopicPartition, records: list[ConsumerRecord]
) -> TopicPartition | None:
    """Decide and append one partition's batch; its partition when ready to commit, else None."""
    try:
        if not await decider.handle(tp, records):
            return None
    except KafkaError as exc:
        log.warning("append failed (%s); rebuilding partition %d", exc, tp.partition)
        await _recover(consumer, decider, tp)
        return None
    return tp


async def _recover(consumer: AIOKafkaConsumer, decider: Decider, tp: TopicPartition) -> None:
    await asyncio.sleep(1.0)
    committed = await consumer.committed(tp)
    await decider.rebuild(tp.partition)
    if committed is None:
        await consumer.seek_to_beginning(tp)
    else:
        consumer.seek(tp, committed)
