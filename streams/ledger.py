"""The send ledger (schemas/sql/0012, ADR 0015): what the sender asked Twilio for, part by part.

`begin` is committed (synchronously) before the Twilio call and `finish` after it, each in its
own transaction with the tenant set: row-level security checks every statement when the
sender's role is not a superuser (the development default, `postgres`, is one and bypasses it;
every statement also names its tenant explicitly). A part found
`attempting` when it is about to be sent was interrupted between the two: ambiguous, to be
reconciled before any new call.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal
from uuid import UUID

import asyncpg

from projections.database import Conn

type PartState = Literal["attempting", "not_sent", "sent", "failed"]

_GET: Final = """
SELECT part, state, message_sid, error_code, content_sid, attempt_started_at FROM send_ledger
WHERE tenant_id = $1 AND outbound_id = $2 ORDER BY part
"""
# A new part starts 'attempting'; a part known not to have been created starts a new attempt.
# Anything else (attempting, sent, failed) is left alone and returned unchanged: the caller
# must look at it first.
_BEGIN: Final = """
INSERT INTO send_ledger AS l (tenant_id, outbound_id, part, recipient, sender, body_sha256,
                              content_sid, state, attempt_started_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'attempting', $8)
ON CONFLICT (tenant_id, outbound_id, part) DO UPDATE
    SET state = 'attempting', attempts = l.attempts + 1,
        attempt_started_at = EXCLUDED.attempt_started_at
    WHERE l.state = 'not_sent'
RETURNING state
"""
_FINISH: Final = """
UPDATE send_ledger SET state = $4::text, message_sid = $5, error_code = $6,
    completed_at = CASE WHEN $4::text IN ('sent', 'failed') THEN $7::timestamptz END
WHERE tenant_id = $1 AND outbound_id = $2 AND part = $3 AND state = 'attempting'
"""
_KNOWN: Final = """
SELECT message_sid FROM send_ledger WHERE tenant_id = $1 AND message_sid = ANY($2::text[])
"""


@dataclass(frozen=True, slots=True)
class Part:
    part: int
    state: PartState
    message_sid: str | None
    error_code: str | None
    content_sid: str | None
    attempt_started_at: datetime


def body_hash(body: str | None) -> str | None:
    return hashlib.sha256(body.encode()).hexdigest() if body is not None else None


@dataclass(slots=True)
class Ledger:
    pool: asyncpg.Pool

    async def parts(self, tenant_id: UUID, outbound_id: str) -> dict[int, Part]:
        async with self._tenant(tenant_id) as conn:
            rows = await conn.fetch(_GET, tenant_id, outbound_id)
        return {row["part"]: Part(**dict(row)) for row in rows}

    async def begin(
        self, tenant_id: UUID, outbound_id: str, part: int, *, recipient: str, sender: str,
        body: str | None, content_sid: str | None, at: datetime,
    ) -> bool:  # fmt: skip
        """Record an attempt about to be made; False if the part is not free to be attempted
        (someone must look at its row first)."""
        async with self._tenant(tenant_id) as conn:
            state = await conn.fetchval(_BEGIN, tenant_id, outbound_id, part, recipient, sender,
                                        body_hash(body), content_sid, at)  # fmt: skip
        return bool(state == "attempting")

    async def finish(
        self, tenant_id: UUID, outbound_id: str, part: int, state: PartState, *,
        message_sid: str | None = None, error_code: str | None = None, at: datetime,
    ) -> None:  # fmt: skip
        async with self._tenant(tenant_id) as conn:
            await conn.execute(_FINISH, tenant_id, outbound_id, part, state, message_sid,
                               error_code, at)  # fmt: skip

    async def known(self, tenant_id: UUID, sids: list[str]) -> set[str]:
        """Which of `sids` the ledger already holds (for another part or message)."""
        async with self._tenant(tenant_id) as conn:
            return {row["message_sid"] for row in await conn.fetch(_KNOWN, tenant_id, sids)}

    @contextlib.asynccontextmanager
    async def _tenant(self, tenant_id: UUID) -> AsyncIterator[Conn]:
        """A connection in a transaction whose `app.tenant_id` is `tenant_id`: BEGIN and the
        setting in one round trip (a simple query; the id is a UUID's own text, nothing
        quoted from outside), then the statement, then COMMIT (ROLLBACK if it raised)."""
        tenant = str(UUID(str(tenant_id)))
        async with self.pool.acquire() as conn:
            await conn.execute(f"BEGIN; SELECT set_config('app.tenant_id', '{tenant}', true)")
            try:
                yield conn
            except BaseException:
                # A ROLLBACK that fails too (a broken connection, which the pool then discards)
                # must not hide why the statement or its caller failed.
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                raise
            await conn.execute("COMMIT")


async def keep_session(conn: Conn) -> None:
    """The ledger pool's reset on release: nothing beyond asyncpg's own rollback of a
    transaction left open. The ledger sets `app.tenant_id` transaction-locally only and takes no
    session locks, cursors or LISTENs, so the default reset (RESET ALL and the rest: a round
    trip on every release) has nothing to undo."""
    del conn
