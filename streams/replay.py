"""Audit replay (issue #7): one tenant's events as they are on the log, checked while they stream.

A source yields the records of the tenant's partition, read group-less from offset 0 to the end
it had when the replay started (ADR 0006), or the tenant's rows of the event archive, in log
order. Tenant first: records keyed for another tenant are dropped before anything else is done
with them, and a record keyed for the tenant but sealed for another is reported, never emitted.

Every record of the tenant, whatever the filters, goes through one `TenantChain`: its bytes must
hash to the hash it carries (`events.chain.hash_of_fields`, the recipe that sealed it), its
sequence number must extend the chain by one and its `prev_hash` link to the previous hash.
Duplicates (at-least-once appends, ADR 0003) are reported and emitted once. The filters only
decide which events are emitted, each as its record value, byte for byte.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from array import array
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Final, Literal, Protocol, Self
from uuid import UUID

import orjson
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from commands.conversation import conversation_id
from events.catalog import EVENT_REGISTRY
from events.chain import GENESIS, ChainHead, carries_its_hash
from events.envelope import HEADER_TENANT_SEQ, headers_from_json
from projections import status
from projections.archive import ArchivedRecord
from projections.database import Conn
from streams import kafka

type Kind = Literal[
    "tampered", "unreadable", "foreign", "gap", "broken_link", "fork", "reordered", "duplicate",
    "mismatch",
]  # fmt: skip
type Fields = dict[str, Any]
type Label = Callable[[int, int], str]

TAMPERED: Final = "its content does not hash to the hash it carries"
UNREADABLE: Final = "not an event envelope (unparseable, or fields missing)"
FETCH_RECORDS: Final = 2000
_PREFETCH_TURNS: Final = 3
ARCHIVE_BATCH: Final = 5000
_NO_HASH: Final = bytes(32)


class SourceError(Exception):
    """The source cannot be read (no such topic, a partition that stops answering)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the replay saw in the tenant's chain, located by sequence number and place."""

    kind: Kind
    tenant_seq: int | None
    where: str
    detail: str

    @property
    def benign(self) -> bool:
        """Duplicates are artefacts of at-least-once appends; everything else is a defect."""
        return self.kind == "duplicate"

    def __str__(self) -> str:
        seq = "seq ?" if self.tenant_seq is None else f"seq {self.tenant_seq}"
        return f"{self.kind}: {seq} at {self.where}: {self.detail}"

    def as_json(self) -> dict[str, object]:
        return {"kind": self.kind, "tenant_seq": self.tenant_seq, "where": self.where,
                "detail": self.detail}  # fmt: skip


def log_label(partition: int, offset: int) -> str:
    return f"partition {partition} offset {offset}"


def line_label(_partition: int, line: int) -> str:
    return f"line {line}"


@dataclass(slots=True)
class _Run:
    """Consecutive sequence numbers from `first`: 32 bytes of hash and a position each."""

    first: int
    hashes: bytearray = field(default_factory=bytearray)
    partitions: array[int] = field(default_factory=lambda: array("i"))
    offsets: array[int] = field(default_factory=lambda: array("q"))


class TenantChain:
    """One tenant's chain as its records arrive in log order.

    What `events.chain.ChainVerifier` checks, over sequence numbers and hashes already extracted
    (so the replay need not build envelopes), and remembering where each sequence number was
    seen (32 bytes and a position per event, in runs: a gap of any size costs nothing), so a
    fork or a duplicate names both places.
    """

    def __init__(self, start: ChainHead = GENESIS, label: Label = log_label) -> None:
        self.base = start.tenant_seq
        self.head_seq = start.tenant_seq
        self.head_hash: str | None = start.hash
        self.label = label
        self.issues: list[Finding] = []
        self.duplicates: list[Finding] = []
        self._runs: list[_Run] = []
        self._firsts: list[int] = []

    @property
    def ok(self) -> bool:
        return not self.issues

    @property
    def head(self) -> ChainHead | None:
        """The last sequence number placed and its hash (None: no event, or its hash unknown)."""
        if self.head_hash is None or self.head_seq == self.base:
            return None
        return ChainHead(self.head_seq, self.head_hash)

    def extend(self, seq: int, digest: str, prev_hash: str, partition: int, offset: int) -> bool:
        """An event whose content matches its hash; True when it is new (not a duplicate)."""
        if seq <= self.head_seq:
            self._repeat(seq, digest, partition, offset)
            return False
        if seq > self.head_seq + 1:
            missing = f"{self.head_seq + 1}..{seq - 1}"
            self._issue("gap", seq, partition, offset,
                        f"sequence numbers {missing} are missing{self._after()}")  # fmt: skip
        elif self.head_hash is not None and prev_hash != self.head_hash:
            self._issue("broken_link", seq, partition, offset,
                        f"prev_hash does not link to the hash of seq {self.head_seq}"
                        f"{self._after()}")  # fmt: skip
        self._place(seq, bytes.fromhex(digest), partition, offset)  # verified: 64 hex digits
        self.head_hash = digest
        return True

    def defect(
        self, kind: Kind, seq: int | None, digest: str | None, partition: int, offset: int,
        detail: str,
    ) -> None:  # fmt: skip
        """A record that cannot extend the chain as it is (tampered, unreadable, foreign). When
        it stands where the next event should, it takes that place with the hash it claims
        (unknown if none), so the next event is checked against that and not reported too."""
        self._issue(kind, seq, partition, offset, detail)
        if kind != "foreign" and seq == self.head_seq + 1:
            try:
                raw = bytes.fromhex(digest) if digest is not None else _NO_HASH
            except ValueError:
                raw = _NO_HASH
            self._place(seq, raw if len(raw) == 32 else _NO_HASH, partition, offset)
            self.head_hash = digest

    def _repeat(self, seq: int, digest: str, partition: int, offset: int) -> None:
        stored = self._stored(seq)
        if stored is None or stored[0] == _NO_HASH:
            self._issue("reordered", seq, partition, offset,
                        f"arrives after seq {self.head_seq}; it was missing there")  # fmt: skip
            return
        raw, first = stored[0], self.label(stored[1], stored[2])
        if raw.hex() == digest:
            self.duplicates.append(Finding("duplicate", seq, self.label(partition, offset),
                                           f"repeats the event at {first}"))  # fmt: skip
        else:
            self._issue("fork", seq, partition, offset,
                        f"a different event already holds seq {seq} (at {first})")  # fmt: skip

    def _place(self, seq: int, raw: bytes, partition: int, offset: int) -> None:
        """Remember `seq` (the caller sets `head_hash`); after a gap, a new run begins."""
        if seq != self.head_seq + 1 or not self._runs:
            self._runs.append(_Run(seq))
            self._firsts.append(seq)
        run = self._runs[-1]
        run.hashes += raw
        run.partitions.append(partition)
        run.offsets.append(offset)
        self.head_seq = seq

    def _stored(self, seq: int) -> tuple[bytes, int, int] | None:
        """Hash and position of `seq` as placed, if it was."""
        at = bisect.bisect_right(self._firsts, seq) - 1
        if at < 0:
            return None
        run = self._runs[at]
        index = seq - run.first
        if index >= len(run.offsets):
            return None
        raw = bytes(run.hashes[index * 32 : index * 32 + 32])
        return raw, run.partitions[index], run.offsets[index]

    def _after(self) -> str:
        if not self._runs:
            return ""
        run = self._runs[-1]
        return f" (after the event at {self.label(run.partitions[-1], run.offsets[-1])})"

    def _issue(self, kind: Kind, seq: int | None, partition: int, offset: int, detail: str) -> None:
        self.issues.append(Finding(kind, seq, self.label(partition, offset), detail))


def sealed_fields(value: bytes | None) -> Fields | None:
    """A record value's fields when it is a JSON object shaped like an event envelope: what a
    record must hold to be placed in a chain and filtered (the hash covers the rest)."""
    if value is None:
        return None
    try:
        fields = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    try:
        shaped = (
            type(fields["tenant_id"]) is str and type(fields["tenant_seq"]) is int
            and type(fields["prev_hash"]) is str and type(fields["hash"]) is str
            and type(fields["stream"]) is str and type(fields["type"]) is str
            and type(fields["recorded_at"]) is str
        )  # fmt: skip
    except (KeyError, TypeError):  # not an object, or a field missing
        return None
    return fields if shaped else None


def parse_instant(text: str) -> datetime:
    """An RFC 3339 date-time with its offset, or a date (midnight UTC); else ValueError."""
    try:
        if "T" not in text.upper():
            return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise ValueError(f"{text!r}: an RFC 3339 date-time with an offset (or a date) is required")
    return value


def recorded_instant(text: str) -> datetime | None:
    """An event's `recorded_at` as an aware datetime; None when damaged (the chain says so)."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class Selection:
    """Which of the tenant's events are emitted. `since`/`until` select one run of sequence
    numbers: from the first event recorded at or after `since` up to, not including, the first
    event recorded at or after `until` (recorded_at follows the log closely but is the command
    record's timestamp, so it is not strictly ordered; a run keeps the export linkable)."""

    tenant_id: UUID
    conversation: str | None = None
    """A conversation id, or a contact address (whatsapp:+…) that names it."""
    since: datetime | None = None
    until: datetime | None = None
    types: frozenset[str] | None = None

    def __post_init__(self) -> None:
        unknown = sorted((self.types or frozenset()) - set(EVENT_REGISTRY.models))
        if unknown:
            raise ValueError(f"unknown event type(s): {', '.join(unknown)}")

    @property
    def conversation_id(self) -> str | None:
        if self.conversation is None or ":" not in self.conversation:
            return self.conversation
        return conversation_id(self.tenant_id, self.conversation)

    @property
    def everything(self) -> bool:
        """No filter at all: every event of the tenant is emitted."""
        return self.contiguous and self.since is None and self.until is None

    @property
    def contiguous(self) -> bool:
        """Every event of a run of sequence numbers is emitted: consecutive lines must link."""
        return self.conversation is None and self.types is None

    def as_json(self) -> dict[str, object]:
        return {
            "conversation_id": self.conversation_id,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "types": sorted(self.types) if self.types is not None else None,
        }


class _Filter:
    """`Selection` applied to the events in chain order (the time window is stateful)."""

    def __init__(self, selection: Selection) -> None:
        cid = selection.conversation_id
        self.stream = f"conversation:{cid}" if cid is not None else None
        self.types = selection.types
        self.since, self.until = selection.since, selection.until
        self.opened, self.closed = self.since is None, False

    def admits(self, fields: Fields) -> bool:
        if not self._in_window(fields["recorded_at"]):
            return False
        if self.stream is not None and fields["stream"] != self.stream:
            return False
        return self.types is None or fields["type"] in self.types

    def _in_window(self, recorded_at: str) -> bool:
        if self.closed:
            return False
        if self.since is None and self.until is None:
            return True
        instant = recorded_instant(recorded_at)
        if instant is None:
            return self.opened  # a damaged timestamp neither opens nor closes the run
        if not self.opened and self.since is not None and instant >= self.since:
            self.opened = True
        if self.opened and self.until is not None and instant >= self.until:
            self.closed = True
        return self.opened and not self.closed


class Record(Protocol):
    """What a source yields: aiokafka's `ConsumerRecord` or an archived record."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


class Source(Protocol):
    """The tenant's records in log order, a batch at a time, and how far the reading got."""

    scanned: int
    total: int | None

    def describe(self) -> dict[str, object]: ...
    def batches(self) -> AsyncIterator[Sequence[Record]]: ...


def tenant_partition(tenant_id: UUID, partitions: Sequence[int]) -> int:
    """The partition the producers put the tenant's records in (its id is the key, ADR 0002):
    aiokafka's default partitioner, murmur2 like Kafka's own clients."""
    ordered = sorted(partitions)
    chosen: int = DefaultPartitioner()(str(tenant_id).encode(), ordered, ordered)
    return chosen


class LogSource:
    """The tenant's partition of the log, read group-less from offset 0 to the end it had when
    opened (the first fetch's high watermark; ListOffsets is wrong on Tansu, ADR 0006)."""

    def __init__(
        self, bootstrap_servers: str, topic: str, tenant_id: UUID, *,
        fetch_records: int = FETCH_RECORDS, idle_timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self.topic, self.tenant_id = topic, tenant_id
        self.fetch_records, self.idle_timeout_s = fetch_records, idle_timeout_s
        self.consumer = kafka.groupless_consumer(bootstrap_servers, max_poll_records=fetch_records)
        self.partition = -1
        self.end = 0
        self.scanned = 0
        self.total: int | None = None
        self._open = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def open(self) -> None:
        await self.consumer.start()
        self._open = True
        try:
            ends = await self._end()
        except BaseException:
            await self.close()
            raise
        self.end = self.total = ends[self.partition]
        self.consumer.seek(TopicPartition(self.topic, self.partition), 0)

    async def _end(self) -> dict[int, int]:
        partitions = await status.topic_partitions(self.consumer, self.topic)
        if not partitions:
            raise SourceError(f"topic {self.topic} does not exist")
        self.partition = tenant_partition(self.tenant_id, partitions)
        try:
            return await status.log_ends(
                self.consumer, self.topic, [self.partition], {}, self.idle_timeout_s
            )
        except TimeoutError as exc:
            raise SourceError(str(exc)) from None

    async def close(self) -> None:
        if self._open:
            self._open = False
            await self.consumer.stop()

    def describe(self) -> dict[str, object]:
        return {"kind": "log", "topic": self.topic, "partition": self.partition,
                "end_offset": self.end}  # fmt: skip

    async def batches(self) -> AsyncIterator[Sequence[Record]]:
        tp = TopicPartition(self.topic, self.partition)
        key, end = str(self.tenant_id).encode(), self.end
        timeout_ms = int(self.idle_timeout_s * 1000)
        while self.scanned < end:
            fetched = await self.consumer.getmany(tp, timeout_ms=timeout_ms,
                                                  max_records=self.fetch_records)  # fmt: skip
            records = fetched.get(tp)
            if not records:
                raise SourceError(
                    f"{self.topic} partition {self.partition}: nothing within "
                    f"{self.idle_timeout_s:g} s at offset {self.scanned} of {end}"
                )
            self.scanned = min(records[-1].offset + 1, end)
            # Let aiokafka's fetcher ask for the next records before this batch is checked, so
            # the broker prepares them meanwhile instead of after.
            for _ in range(_PREFETCH_TURNS):
                await asyncio.sleep(0)
            yield [r for r in records if r.key == key and r.offset < end]


_TENANT_ROWS: Final = """
FROM event_archive WHERE topic = $1 AND (tenant_id = $2 OR tenant_id IS NULL) AND key = $3
"""
_COUNT: Final = "SELECT count(*) " + _TENANT_ROWS
_READ: Final = (
    'SELECT partition, "offset", key, value, headers::text AS headers, timestamp_ms '
    + _TENANT_ROWS + 'ORDER BY partition, "offset"'
)  # fmt: skip


class ArchiveSource:
    """The tenant's rows of the event archive (ADR 0009), in log order: partition, offset."""

    def __init__(self, conn: Conn, topic: str, tenant_id: UUID, batch: int = ARCHIVE_BATCH):
        self.conn, self.topic, self.tenant_id, self.batch = conn, topic, tenant_id, batch
        self.scanned = 0
        self.total: int | None = None

    async def count(self) -> None:
        self.total = await self.conn.fetchval(_COUNT, *self._args())

    def describe(self) -> dict[str, object]:
        return {"kind": "archive", "topic": self.topic, "rows": self.total}

    def _args(self) -> tuple[str, UUID, bytes]:
        return self.topic, self.tenant_id, str(self.tenant_id).encode()

    async def batches(self) -> AsyncIterator[Sequence[Record]]:
        async with self.conn.transaction(readonly=True):
            cursor = await self.conn.cursor(_READ, *self._args())
            while rows := await cursor.fetch(self.batch):
                self.scanned += len(rows)
                yield [
                    ArchivedRecord(r["partition"], r["offset"], r["key"], r["value"],
                                   headers_from_json(r["headers"]), r["timestamp_ms"])
                    for r in rows
                ]  # fmt: skip


def _seq_header(record: Record) -> int | None:
    for name, raw in record.headers:
        if name == HEADER_TENANT_SEQ:
            with contextlib.suppress(ValueError):
                return int(raw)
    return None


@dataclass(slots=True)
class Replay:
    """Drives a source through the tenant's chain and the selection; see the module docstring.

    Iterate `emitted()` to the end; then `count`, `first`, `last` and `chain` describe it.
    """

    selection: Selection
    source: Source
    chain: TenantChain = field(default_factory=TenantChain)
    count: int = 0
    first: ChainHead | None = None
    last: ChainHead | None = None
    events_seen: int = 0

    @property
    def ok(self) -> bool:
        return self.chain.ok

    async def emitted(self) -> AsyncIterator[list[bytes]]:
        """The selected events' record values, a batch at a time. Only values: a batch's parsed
        fields are let go event by event (keeping them costs a third of the replay's time)."""
        chain, extend = self.chain, self.chain.extend
        admit = None if self.selection.everything else _Filter(self.selection).admits
        tenant = str(self.selection.tenant_id)
        async for batch in self.source.batches():
            out: list[bytes] = []
            last: Fields | None = None
            for record in batch:
                value = record.value
                fields = sealed_fields(value)
                if fields is None or value is None:
                    chain.defect("unreadable", _seq_header(record), None, record.partition,
                                 record.offset, UNREADABLE)  # fmt: skip
                    continue
                if fields["tenant_id"] != tenant:
                    chain.defect("foreign", _seq_header(record) or fields["tenant_seq"], None,
                                 record.partition, record.offset,
                                 f"keyed for this tenant, sealed for {fields['tenant_id']}; "
                                 "not emitted")  # fmt: skip
                    continue
                if not carries_its_hash(fields, value):
                    self._tampered(record, fields)
                    value = _one_line(value)
                elif not extend(fields["tenant_seq"], fields["hash"], fields["prev_hash"],
                                record.partition, record.offset):  # fmt: skip
                    continue  # a duplicate: emitted once
                if admit is None or admit(fields):
                    out.append(value)
                    if self.first is None:
                        self.first = _head(fields)
                    last = fields
            self.events_seen += len(batch)
            if last is not None:
                self.count += len(out)
                self.last = _head(last)
            yield out

    def _tampered(self, record: Record, fields: Fields) -> None:
        seq, said = fields["tenant_seq"], _seq_header(record)
        claims = f" (its content says seq {seq})" if said not in (None, seq) else ""
        self.chain.defect("tampered", said or seq, fields["hash"], record.partition,
                          record.offset, TAMPERED + claims)  # fmt: skip


def _one_line(value: bytes) -> bytes:
    """A sealed value never holds a raw line break (JSON escapes them in strings); a tampered
    one may, between tokens, where a space means the same: one record stays one NDJSON line."""
    if b"\n" in value or b"\r" in value:
        return value.replace(b"\n", b" ").replace(b"\r", b" ")
    return value


def _head(fields: Fields) -> ChainHead:
    return ChainHead(fields["tenant_seq"], fields["hash"])
