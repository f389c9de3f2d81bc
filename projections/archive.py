"""The event archive: every record of the log, byte for byte, at its partition and offset.

Written by the projector in the same transaction as the other projections' rows and its own
checkpoint; read back to restore the log (`streams.restore`) and, later, for audits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

from events.envelope import EventEnvelope, KafkaHeaders, headers_from_json, headers_to_json
from projections.database import Conn

NAME: Final = "event_archive"

# One statement per batch (arrays, `unnest`): a thousand records are one round trip.
_STORE: Final = """
INSERT INTO event_archive (topic, partition, "offset", key, value, headers, timestamp_ms,
                           tenant_id, tenant_seq, hash)
SELECT $1, $2, u.* FROM unnest($3::bigint[], $4::bytea[], $5::bytea[], $6::jsonb[],
                               $7::bigint[], $8::uuid[], $9::bigint[], $10::text[]) AS u
ON CONFLICT (topic, partition, "offset") DO NOTHING
"""


@dataclass(frozen=True, slots=True)
class ArchivedRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: KafkaHeaders
    timestamp_ms: int


async def store(
    conn: Conn,
    topic: str,
    partition: int,
    records: Sequence[tuple[int, bytes | None, bytes, Sequence[tuple[str, bytes]], int]],
    envelopes: Sequence[EventEnvelope | None],
) -> None:
    """Archive (offset, key, value, headers, timestamp_ms) records; None: not an event."""
    rows = [
        (offset, key, value, headers_to_json(headers), timestamp,
         e.tenant_id if e else None, e.tenant_seq if e else None, e.hash if e else None)
        for (offset, key, value, headers, timestamp), e in zip(records, envelopes, strict=True)
    ]  # fmt: skip
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 8
    await conn.execute(_STORE, topic, partition, *columns)


async def counts(conn: Conn, topic: str) -> dict[int, int]:
    """partition → number of archived records."""
    rows = await conn.fetch(
        "SELECT partition, count(*) AS n FROM event_archive WHERE topic = $1 GROUP BY partition",
        topic,
    )
    return {row["partition"]: row["n"] for row in rows}


async def read_partition(
    conn: Conn, topic: str, partition: int, batch: int = 5000
) -> AsyncIterator[list[ArchivedRecord]]:
    """A partition's records in offset order, `batch` at a time (keyset pagination)."""
    after = -1
    while True:
        rows = await conn.fetch(
            'SELECT "offset", key, value, headers::text AS headers, timestamp_ms FROM event_archive'
            ' WHERE topic = $1 AND partition = $2 AND "offset" > $3 ORDER BY "offset" LIMIT $4',
            topic, partition, after, batch,
        )  # fmt: skip
        if not rows:
            return
        yield [
            ArchivedRecord(partition, r["offset"], r["key"], r["value"],
                           headers_from_json(r["headers"]), r["timestamp_ms"])
            for r in rows
        ]  # fmt: skip
        after = rows[-1]["offset"]
