"""PostgreSQL scenario: raw asyncpg `executemany` upserts, the baseline for the projector."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Final

import asyncpg
import orjson

ROWS_PER_TRANSACTION: Final = 1000
LIMIT_S: Final = 60.0
TABLE: Final = "bench_upsert"
UPSERT: Final = (
    f"INSERT INTO {TABLE} (event_id, tenant_id, tenant_seq, payload)"  # noqa: S608 - constant
    " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (event_id) DO NOTHING"
)

type UpsertRow = tuple[uuid.UUID, uuid.UUID, int, str]


def _rows(count: int, tenants: int = 50) -> list[UpsertRow]:
    ids = [uuid.uuid4() for _ in range(tenants)]
    return [
        (
            uuid.uuid4(),
            ids[n % tenants],
            n // tenants + 1,
            orjson.dumps(
                {"type": "MessageReceived", "message_sid": f"SM{n:032x}", "chars": 68}
            ).decode(),
        )
        for n in range(count)
    ]


async def _load(conn: asyncpg.Connection, rows: list[UpsertRow]) -> None:
    for start in range(0, len(rows), ROWS_PER_TRANSACTION):
        async with conn.transaction():
            await conn.executemany(UPSERT, rows[start : start + ROWS_PER_TRANSACTION])


async def upsert_rates(database_url: str, count: int, repeats: int) -> list[float]:
    """Rows/s of `repeats` loads of `count` fresh rows (table emptied between loads, untimed)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            f"CREATE TABLE {TABLE} (event_id uuid PRIMARY KEY, tenant_id uuid NOT NULL,"
            " tenant_seq bigint NOT NULL, payload jsonb NOT NULL)"
        )
        await _load(conn, _rows(ROWS_PER_TRANSACTION))  # warm-up: connection, plan, caches
        rates = []
        for _ in range(repeats):
            await conn.execute(f"TRUNCATE {TABLE}")
            rows = _rows(count)
            started = time.perf_counter()
            await asyncio.wait_for(_load(conn, rows), LIMIT_S)
            rates.append(count / (time.perf_counter() - started))
        stored = await conn.fetchval(f"SELECT count(*) FROM {TABLE}")  # noqa: S608 - constant
        if stored != count:
            raise RuntimeError(f"upsert stored {stored} rows, expected {count}")
        await conn.execute(f"DROP TABLE {TABLE}")
    finally:
        await conn.close()
    return rates
