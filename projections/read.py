"""Queries over the conversation read models, always inside one tenant's transaction.

`tenant_scope` is the only way in: it borrows a connection of the API's pool (connected as the
`zapflow_app` role), opens a transaction and sets `app.tenant_id` for that transaction alone, so
row-level security limits every statement to the tenant even if a query forgets its
`tenant_id` filter, and a pooled connection cannot carry the tenant into the next request.
The queries filter by tenant all the same: the indexes lead with `tenant_id`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Final
from uuid import UUID

import asyncpg
import orjson

from projections.database import Conn

MAX_LIMIT: Final = 200


class BadCursor(ValueError):
    """A pagination cursor that this API did not issue."""


@asynccontextmanager
async def tenant_scope(
    pool: asyncpg.Pool, tenant_id: UUID, *, readonly: bool = True
) -> AsyncIterator[Conn]:
    """A connection in a (by default read-only) transaction that sees `tenant_id`'s rows only."""
    async with pool.acquire() as conn, conn.transaction(readonly=readonly):
        # UTC too: day boundaries (`::date`) must not depend on the server's or role's TimeZone.
        # The search path is the active version's schema (`projections.versions`), read in the
        # same statement: the whole transaction reads one version, even across a swap.
        await conn.execute(_ENTER, str(tenant_id))
        yield conn


_ACTIVE_SCHEMA: Final = """coalesce((SELECT schema_name FROM projection_versions
                  WHERE projection = 'conversations' AND state = 'active'), 'public')"""
"""The schema of the active version of the conversation read models (ADR 0012), as SQL."""
_ENTER: Final = f"""
SELECT set_config('app.tenant_id', $1, true), set_config('TimeZone', 'UTC', true),
       set_config('search_path', {_ACTIVE_SCHEMA}, true)
"""


def encode_cursor(*values: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BadCursor("the cursor is not one this API issued") from None
    if not isinstance(values, list) or len(values) != arity:
        raise BadCursor("the cursor is not one this API issued")
    return values


@dataclass(frozen=True, slots=True)
class ConversationFilter:
    state: str | None = None
    updated_since: datetime | None = None
    contact: str | None = None
    q: str | None = None


_CONVERSATION_COLUMNS: Final = """
c.conversation_id, c.contact, c.sender, c.state, c.owner, c.opted_out, c.window_open_until,
c.last_message_at, c.last_message_preview, c.unread_count, c.started_at, c.updated_at
"""


async def conversations(
    conn: Conn, tenant_id: UUID, where: ConversationFilter, limit: int, cursor: str | None
) -> tuple[list[asyncpg.Record], str | None]:
    """A page of the tenant's conversations, most recently updated first."""
    clauses, args = ["c.tenant_id = $1"], list[object]([tenant_id])

    def arg(value: object) -> str:
        args.append(value)
        return f"${len(args)}"

    if where.state is not None:
        clauses.append(f"c.state = {arg(where.state)}")
    if where.updated_since is not None:
        clauses.append(f"c.updated_at >= {arg(where.updated_since)}")
    if where.contact is not None:
        clauses.append(f"c.contact = {arg(where.contact)}")
    if where.q:
        clauses.append(
            "EXISTS (SELECT FROM messages m WHERE m.tenant_id = c.tenant_id "
            "AND m.conversation_id = c.conversation_id "
            f"AND m.body_search @@ plainto_tsquery('simple', {arg(where.q)}))"
        )
    if cursor is not None:
        updated_at, conversation_id = decode_cursor(cursor, 2)
        if not (isinstance(updated_at, str) and isinstance(conversation_id, str)):
            raise BadCursor("the cursor is not one this API issued")
        try:
            after = (datetime.fromisoformat(updated_at), UUID(conversation_id))
        except ValueError:
            raise BadCursor("the cursor is not one this API issued") from None
        if after[0].tzinfo is None:
            raise BadCursor("the cursor is not one this API issued")
        clauses.append(f"(c.updated_at, c.conversation_id) < ({arg(after[0])}, {arg(after[1])})")
    sql = (
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c WHERE {' AND '.join(clauses)} "  # noqa: S608 - clauses are ours, values are parameters
        f"ORDER BY c.updated_at DESC, c.conversation_id DESC LIMIT {arg(limit + 1)}"
    )
    rows = await conn.fetch(sql, *args)
    if len(rows) <= limit:
        return list(rows), None
    last = rows[limit - 1]
    return list(rows[:limit]), encode_cursor(
        last["updated_at"].isoformat(), str(last["conversation_id"])
    )


async def conversation(conn: Conn, tenant_id: UUID, conversation_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {_CONVERSATION_COLUMNS} FROM conversations c "  # noqa: S608 - fixed text
        "WHERE c.tenant_id = $1 AND c.conversation_id = $2",
        tenant_id,
        conversation_id,
    )


async def messages(
    conn: Conn, tenant_id: UUID, conversation_id: UUID, limit: int, cursor: str | None
) -> tuple[list[asyncpg.Record], str | None]:
    """A page of one conversation's messages, oldest first."""
    after = 0
    if cursor is not None:
        (after,) = decode_cursor(cursor, 1)
        if not isinstance(after, int) or isinstance(after, bool) or not 0 <= after < 2**63:
            raise BadCursor("the cursor is not one this API issued")
    rows = await conn.fetch(
        "SELECT message_id, direction, author, body, media::text AS media, content_sid, "
        "twilio_sid, status, error_code, created_at, tenant_seq FROM messages "
        "WHERE tenant_id = $1 AND conversation_id = $2 AND tenant_seq > $3 "
        "ORDER BY tenant_seq LIMIT $4",
        tenant_id,
        conversation_id,
        after,
        limit + 1,
    )
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), encode_cursor(rows[limit - 1]["tenant_seq"])


async def command_result(conn: Conn, tenant_id: UUID, command_id: UUID) -> asyncpg.Record | None:
    """What became of a command, once the projector has seen its first event."""
    return await conn.fetchrow(
        "SELECT outcome, command_type, reason_code, reason FROM command_results "
        "WHERE tenant_id = $1 AND command_id = $2",
        tenant_id,
        command_id,
    )


_DAILY_MESSAGES: Final = """
SELECT (created_at AT TIME ZONE 'UTC')::date AS day,
       count(*) FILTER (WHERE direction = 'inbound') AS inbound,
       count(*) FILTER (WHERE direction = 'outbound' AND author = 'bot') AS outbound_bot,
       count(*) FILTER (WHERE direction = 'outbound' AND author = 'human') AS outbound_human
FROM messages
WHERE tenant_id = $1 AND created_at >= $2::date AND created_at < $3::date + 1
GROUP BY 1
"""
_DAILY_FACTS: Final = """
SELECT day, kind, coalesce(code, '') AS code, count(*) AS n FROM conversation_facts
WHERE tenant_id = $1 AND day BETWEEN $2 AND $3
GROUP BY 1, 2, 3
"""
# A customer turn starts with an inbound message right after a reply (or the first message);
# its first response is the next outbound message of that conversation.
_DAILY_FIRST_RESPONSE: Final = """
SELECT (started AT TIME ZONE 'UTC')::date AS day,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM answered - started))
           AS median_seconds
FROM (
    SELECT created_at AS started, direction,
           lag(direction) OVER turn AS previous,
           min(created_at) FILTER (WHERE direction = 'outbound')
               OVER (turn ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS answered
    FROM messages
    WHERE tenant_id = $1 AND conversation_id IN (
        SELECT conversation_id FROM messages
        WHERE tenant_id = $1 AND created_at >= $2::date AND created_at < $3::date + 1
    )  -- whole conversations: a turn begun the day before is not a new one
    WINDOW turn AS (PARTITION BY conversation_id ORDER BY tenant_seq)
) m
WHERE direction = 'inbound' AND coalesce(previous, 'outbound') = 'outbound'
  AND answered IS NOT NULL AND started >= $2::date AND started < $3::date + 1
GROUP BY 1
"""


@dataclass(slots=True)
class Day:
    """One UTC day of a tenant's activity."""

    day: date
    inbound: int = 0
    outbound_bot: int = 0
    outbound_human: int = 0
    handoffs: int = 0
    closed: int = 0
    opt_outs: int = 0
    median_first_response_seconds: float | None = None
    failures: dict[str, int] = field(default_factory=dict)


async def daily(conn: Conn, tenant_id: UUID, first: date, last: date) -> list[Day]:
    """Every day from `first` to `last` (inclusive), zeros included."""
    days = {first + timedelta(days=n): Day(first + timedelta(days=n))
            for n in range((last - first).days + 1)}  # fmt: skip
    for row in await conn.fetch(_DAILY_MESSAGES, tenant_id, first, last):
        day = days[row["day"]]
        day.inbound, day.outbound_bot = row["inbound"], row["outbound_bot"]
        day.outbound_human = row["outbound_human"]
    for row in await conn.fetch(_DAILY_FACTS, tenant_id, first, last):
        day, n = days[row["day"]], row["n"]
        match row["kind"]:
            case "handoff":
                day.handoffs += n
            case "closed":
                day.closed += n
            case "opted_out":
                day.opt_outs += n
            case "failed":
                code = row["code"] or "unknown"
                day.failures[code] = day.failures.get(code, 0) + n
    for row in await conn.fetch(_DAILY_FIRST_RESPONSE, tenant_id, first, last):
        days[row["day"]].median_first_response_seconds = float(row["median_seconds"])
    return list(days.values())


ENTER_WITH_PUBLIC: Final = f"""
SELECT set_config('app.tenant_id', $1, true),
       set_config('search_path', {_ACTIVE_SCHEMA} || ', public', true)
"""
"""For tools outside the API that read the active version and `public`'s tables (agent
settings, the tenant directory) in one transaction: the tenant set, the active schema first."""
