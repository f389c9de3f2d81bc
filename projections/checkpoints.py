"""Where each projection stands: its next offset per partition and its last sequence per tenant.

Both are written in the same transaction as the projection's rows (ARCHITECTURE §2.5), and
neither ever moves backwards: two runners replaying the same records cannot undo each other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final
from uuid import UUID

from projections.database import Conn

type TenantSeqs = dict[tuple[str, UUID], int]
"""(projection, tenant_id) → the last `tenant_seq` that projection applied for that tenant."""

_NEXT_OFFSETS: Final = """
SELECT projection, next_offset FROM projection_checkpoints
WHERE projection = ANY($1::text[]) AND topic = $2 AND partition = $3
"""

_SAVE_OFFSET: Final = """
INSERT INTO projection_checkpoints (projection, topic, partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (projection, topic, partition) DO UPDATE
SET next_offset = GREATEST(projection_checkpoints.next_offset, EXCLUDED.next_offset),
    updated_at = now()
"""

_SAVE_SEQ: Final = """
INSERT INTO projection_tenant_seq (projection, tenant_id, last_seq) VALUES ($1, $2, $3)
ON CONFLICT (projection, tenant_id) DO UPDATE
SET last_seq = GREATEST(projection_tenant_seq.last_seq, EXCLUDED.last_seq)
"""


async def next_offsets(
    conn: Conn, projections: Collection[str], topic: str, partition: int, *, lock: bool = False
) -> dict[str, int]:
    """projection → next offset to read in one partition (0 for a projection never run there).

    With `lock`, the rows stay locked until the transaction ends, so a second runner on the same
    partition waits and then sees what the first one wrote.
    """
    rows = await conn.fetch(
        _NEXT_OFFSETS + "FOR UPDATE" if lock else _NEXT_OFFSETS,
        list(projections),
        topic,
        partition,
    )
    stored = {row["projection"]: row["next_offset"] for row in rows}
    return {name: stored.get(name, 0) for name in projections}


async def save_next_offset(
    conn: Conn, projections: Collection[str], topic: str, partition: int, next_offset: int
) -> None:
    await conn.executemany(
        _SAVE_OFFSET, [(name, topic, partition, next_offset) for name in projections]
    )


async def partition_offsets(conn: Conn, projection: str, topic: str) -> dict[int, int]:
    """partition → next offset of one projection over a whole topic (for lag and tests)."""
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM projection_checkpoints "
        "WHERE projection = $1 AND topic = $2",
        projection,
        topic,
    )
    return {row["partition"]: row["next_offset"] for row in rows}


async def tenant_seqs(
    conn: Conn, projections: Collection[str], tenant_ids: Collection[UUID]
) -> TenantSeqs:
    """The last applied sequence of each (projection, tenant) that has one."""
    rows = await conn.fetch(
        "SELECT projection, tenant_id, last_seq FROM projection_tenant_seq "
        "WHERE projection = ANY($1::text[]) AND tenant_id = ANY($2::uuid[])",
        list(projections),
        list(tenant_ids),
    )
    return {(row["projection"], row["tenant_id"]): row["last_seq"] for row in rows}


async def save_tenant_seqs(conn: Conn, seqs: Mapping[tuple[str, UUID], int]) -> None:
    if seqs:
        await conn.executemany(_SAVE_SEQ, [(p, t, seq) for (p, t), seq in seqs.items()])
