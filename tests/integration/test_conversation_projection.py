"""The conversations projection on PostgreSQL, fed by events the real decider code produces.

A whole conversation lifecycle (start, messages, opt-out, hand-off, a human reply, return, close,
reopen) is decided with `TenantBook`, sealed, and applied; the rows must tell the same story, and
applying every event a second time must change nothing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from commands import conversation as conv
from commands.agent import RecordAgentTurn
from commands.operator import (
    CloseConversation,
    HandOffToHuman,
    RequestHandoff,
    RequestOutboundMessage,
    ReturnToBot,
)
from events.chain import ChainHead, head_of, seal
from events.conversation import AgentReplied, ToolCall
from events.envelope import (
    CommandEnvelope,
    EventDraft,
    EventEnvelope,
    decode_event,
    encode_event,
)
from events.registry import Message
from projections import conversations, read
from projections.database import APP_ROLE, with_user
from projections.migrations import migrate
from streams.tenant_book import TenantBook
from tests.integration.test_decider import ACCOUNT, SENDER, inbound, register

pytestmark = pytest.mark.integration
CONTACT = "whatsapp:+5511999990042"
T0 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)


def _operator(tenant: uuid.UUID, body: Message, n: int) -> CommandEnvelope:
    cid = uuid.uuid5(tenant, f"op-{n}")
    return CommandEnvelope(
        command_id=cid, tenant_id=tenant, type=body.type, schema_version=body.schema_version,
        issued_at=T0 + timedelta(minutes=n), correlation_id=cid, payload=body.payload(),
    )  # fmt: skip


def _decided(tenant: uuid.UUID, commands: list[CommandEnvelope]) -> list[EventEnvelope]:
    book, out = TenantBook(tenant), []
    for n, command in enumerate(commands):
        for draft, event in book.decide(command, T0 + timedelta(minutes=n, seconds=1)):
            envelope = seal(draft, book.head)
            assert head_of(envelope).tenant_seq == book.head.tenant_seq + 1
            book.record(envelope, event)
            out.append(envelope)
    return out


async def _snapshot(db: asyncpg.Connection) -> list[list[asyncpg.Record]]:
    return [
        await db.fetch("SELECT * FROM conversations ORDER BY conversation_id"),
        await db.fetch("SELECT * FROM messages ORDER BY tenant_seq"),
        await db.fetch("SELECT * FROM contacts ORDER BY contact"),
    ]


def _lifecycle(tenant: uuid.UUID) -> list[EventEnvelope]:
    cid = conv.conversation_id(tenant, CONTACT)
    handoff = [
        RequestHandoff(conversation_id=cid, reason="quer falar com alguém"),
        HandOffToHuman(conversation_id=cid, operator="maria@clinica"),
        RequestOutboundMessage(conversation_id=cid, author="human", body="Olá, aqui é a Maria"),
        ReturnToBot(conversation_id=cid, operator="maria@clinica"),
    ]
    close = CloseConversation(conversation_id=cid, closed_by="maria@clinica")
    return _decided(
        tenant,
        [
            register(tenant, ACCOUNT, SENDER),
            inbound(tenant, "SM1", CONTACT, "Oi, bom dia"),
            *(_operator(tenant, body, n) for n, body in enumerate(handoff, start=2)),
            inbound(tenant, "SM2", CONTACT, "PARAR"),
            _operator(tenant, close, 7),
            _operator(tenant, close, 8),  # closing twice: a rejection
            inbound(tenant, "SM3", CONTACT, "VOLTAR"),
        ],
    )


async def test_a_conversation_lifecycle_in_the_read_models(db: asyncpg.Connection) -> None:
    await migrate(db)
    tenant = uuid.uuid4()
    cid = conv.conversation_id(tenant, CONTACT)
    events = _lifecycle(tenant)
    assert [e.type for e in events].count("CommandRejected") == 1
    for envelope in events:
        async with db.transaction():
            await conversations.apply(db, envelope)
    row = await db.fetchrow("SELECT * FROM conversations WHERE tenant_id = $1", tenant)
    assert row is not None
    assert (row["conversation_id"], row["contact"], row["sender"]) == (
        uuid.UUID(cid),
        CONTACT,
        SENDER,
    )
    assert (row["state"], row["owner"], row["opted_out"]) == ("bot", None, False)  # reopened
    assert row["last_message_preview"] == "VOLTAR"
    assert row["unread_count"] == 2  # the human reply read the first one
    messages = await db.fetch(
        "SELECT message_id, direction, author, body, status FROM messages "
        "WHERE tenant_id = $1 ORDER BY tenant_seq",
        tenant,
    )
    assert [(m["direction"], m["author"], m["body"]) for m in messages] == [
        ("inbound", "contact", "Oi, bom dia"),
        ("outbound", "human", "Olá, aqui é a Maria"),
        ("inbound", "contact", "PARAR"),
        ("inbound", "contact", "VOLTAR"),
    ]
    contact = await db.fetchrow("SELECT opted_out FROM contacts WHERE tenant_id = $1", tenant)
    assert contact is not None
    assert contact["opted_out"] is False  # opted out by PARAR, back in by VOLTAR

    results = await db.fetch(
        "SELECT command_id, outcome, reason_code FROM command_results WHERE tenant_id = $1 "
        "ORDER BY tenant_seq",
        tenant,
    )
    # A result for each operator command (callers wait on those), none for webhook commands;
    # the tenant's registration has one too, first (the admin API waits on it).
    operator_ids = [uuid.uuid5(tenant, f"op-{n}") for n in (2, 3, 4, 5, 7, 8)]
    assert results[0]["outcome"] == "accepted"
    assert results[0]["command_id"] not in operator_ids
    assert [(r["command_id"], r["outcome"], r["reason_code"]) for r in results[1:]] == [
        *((command_id, "accepted", None) for command_id in operator_ids[:5]),
        (operator_ids[5], "rejected", "invalid_state_closed"),
    ]

    (day, after) = await read.daily(db, tenant, T0.date(), T0.date() + timedelta(days=1))
    assert (day.inbound, day.outbound_bot, day.outbound_human) == (3, 0, 1)
    assert (day.handoffs, day.closed, day.opt_outs, day.failures) == (1, 1, 1, {})
    assert day.median_first_response_seconds == 4 * 60  # SM1 at 10:00, Maria at 10:04
    assert (after.inbound, after.handoffs, after.median_first_response_seconds) == (0, 0, None)

    before = await _snapshot(db)
    for envelope in events:  # a replayed log changes nothing
        async with db.transaction():
            await conversations.apply(db, envelope)
    assert await _snapshot(db) == before


async def test_states_along_the_way(db: asyncpg.Connection) -> None:
    await migrate(db)
    tenant = uuid.uuid4()
    cid = conv.conversation_id(tenant, CONTACT)
    commands = [
        register(tenant, ACCOUNT, SENDER),
        inbound(tenant, "SM1", CONTACT, "STOP"),
        _operator(tenant, HandOffToHuman(conversation_id=cid, operator="joão"), 2),
    ]
    for envelope in _decided(tenant, commands):
        async with db.transaction():
            await conversations.apply(db, envelope)
    row = await db.fetchrow("SELECT state, owner, opted_out FROM conversations")
    assert row is not None
    assert (row["state"], row["owner"], row["opted_out"]) == ("human", "joão", True)


async def _normalised(db: asyncpg.Connection, tenant: uuid.UUID) -> list[list[tuple[object, ...]]]:
    """Every read-model row of `tenant`, without the columns that name the tenant."""
    queries = [
        "SELECT contact, sender, state, owner, opted_out, window_open_until, last_message_at, "
        "last_message_preview, unread_count, started_at, updated_at FROM conversations",
        "SELECT CASE direction WHEN 'inbound' THEN message_id END, direction, author, body, "
        "media::text, status, created_at, tenant_seq FROM messages ORDER BY tenant_seq",
        "SELECT contact, opted_out, updated_at FROM contacts",
        "SELECT outcome, command_type, reason_code, tenant_seq FROM command_results "
        "ORDER BY tenant_seq",
    ]
    out = []
    for query in queries:
        where = " WHERE tenant_id = $1"
        if " ORDER BY" in query:
            head, _, order = query.partition(" ORDER BY")
            query = f"{head}{where} ORDER BY{order}"
        else:
            query += where
        out.append([tuple(r) for r in await db.fetch(query, tenant)])
    return out


@pytest.mark.parametrize("chunk", [2, 3, 100])
async def test_batches_of_any_size_project_what_single_events_do(
    db: asyncpg.Connection, chunk: int
) -> None:
    """`apply_batch` reorders statements by kind; the rows must not notice."""
    await migrate(db)
    one, many = uuid.uuid4(), uuid.uuid4()
    for envelope in _lifecycle(one):
        async with db.transaction():
            await conversations.apply(db, envelope)
    events = _lifecycle(many)
    for start in range(0, len(events), chunk):
        async with db.transaction():
            await conversations.apply_batch(db, events[start : start + chunk])
    single, batched = await _normalised(db, one), await _normalised(db, many)
    assert all(single)
    assert batched == single


@pytest.mark.parametrize("read_from_the_log", [False, True])
async def test_a_nul_character_is_stored_not_fatal(
    db: asyncpg.Connection, read_from_the_log: bool
) -> None:
    """PostgreSQL refuses NUL in text: projected as U+FFFD, never a poison for the partition.
    Also for events decoded from record bytes, whose NUL check looks at the bytes only."""
    await migrate(db)
    tenant = uuid.uuid4()
    events = _decided(
        tenant,
        [register(tenant, ACCOUNT, SENDER), inbound(tenant, "SM\x001", CONTACT, "a\x00b")],
    )
    if read_from_the_log:
        events = [decode_event(encode_event(event)[1]) for event in events]
    async with db.transaction():
        await conversations.apply_batch(db, events)
    row = await db.fetchrow("SELECT message_id, body FROM messages WHERE tenant_id = $1", tenant)
    assert row is not None
    assert (row["message_id"], row["body"]) == ("SM\ufffd1", "a\ufffdb")


async def test_the_same_message_twice_in_a_batch_counts_once(db: asyncpg.Connection) -> None:
    await migrate(db)
    one, many = uuid.uuid4(), uuid.uuid4()
    for tenant, repeat in ((one, 1), (many, 2)):
        events = _decided(tenant, [register(tenant, ACCOUNT, SENDER),
                                   inbound(tenant, "SM1", CONTACT, "Oi")])  # fmt: skip
        async with db.transaction():
            await conversations.apply_batch(db, events + events[-1:] * (repeat - 1))
    assert await _normalised(db, many) == await _normalised(db, one)


async def test_days_are_utc_days_whatever_the_sessions_time_zone(
    db: asyncpg.Connection, database_url: str
) -> None:
    """01:00 UTC is the UTC day's, also for a São Paulo session (where it is the day before)."""
    await migrate(db)
    tenant = uuid.uuid4()
    messages = [
        CommandEnvelope.model_validate(
            {**inbound(tenant, sid, CONTACT, "Oi").model_dump(),
             "issued_at": datetime(2026, 11, day, 1, 0, tzinfo=UTC)}
        )
        for sid, day in (("SM1", 26), ("SM2", 27))
    ]  # fmt: skip
    async with db.transaction():
        await conversations.apply_batch(
            db, _decided(tenant, [register(tenant, ACCOUNT, SENDER), *messages])
        )
    pool = await asyncpg.create_pool(
        with_user(database_url, APP_ROLE), min_size=1, max_size=1,
        server_settings={"TimeZone": "America/Sao_Paulo"},
    )  # fmt: skip
    assert pool is not None
    try:
        async with read.tenant_scope(pool, tenant) as conn:
            days = await read.daily(conn, tenant, date(2026, 11, 25), date(2026, 11, 26))
    finally:
        await pool.close()
    assert [(d.day, d.inbound) for d in days] == [(date(2026, 11, 25), 0), (date(2026, 11, 26), 1)]


def _agent_replied(tenant: uuid.UUID, head: ChainHead, model: str, n: int) -> EventEnvelope:
    cid = conv.conversation_id(tenant, CONTACT)
    event = AgentReplied(
        conversation_id=cid, turn_id=f"turn-{n}", trigger_message_sid="SM1", agent="llm",
        model=model, prompt_hash="ab" * 32, reply="Claro! Amanhã às 10h?",
        outbound_id=f"out-{n}",
        tool_calls=[ToolCall(name="search_knowledge", arguments={"query": "horário\x00"},
                             accepted=True, result="Abrimos às 8h")],
        tokens_in=1200, tokens_out=300, latency_ms=840,
    )  # fmt: skip
    command_id = uuid.uuid5(tenant, f"turn-{n}")
    draft = EventDraft(
        event_id=uuid.uuid5(command_id, "0"), type=event.type,
        schema_version=event.schema_version, tenant_id=tenant, stream=f"conversation:{cid}",
        occurred_at=T0 + timedelta(minutes=n), recorded_at=T0 + timedelta(minutes=n),
        correlation_id=command_id, causation_id=command_id, payload=event.payload(),
    )  # fmt: skip
    return seal(draft, head)


async def test_agent_turns_record_what_the_bot_did_and_an_estimated_cost(
    db: asyncpg.Connection,
) -> None:
    await migrate(db)
    tenant = uuid.uuid4()
    events = _decided(tenant, [register(tenant, ACCOUNT, SENDER),
                               inbound(tenant, "SM1", CONTACT, "Oi")])  # fmt: skip
    events.append(_agent_replied(tenant, head_of(events[-1]), "gpt-4o-mini-2024-07-18", 5))
    events.append(_agent_replied(tenant, head_of(events[-1]), "llama3.1:8b", 6))
    for _ in range(2):  # the second pass is a replay: nothing changes
        async with db.transaction():
            await conversations.apply_batch(db, events)
    rows = await db.fetch("SELECT * FROM agent_turns WHERE tenant_id = $1 ORDER BY tenant_seq",
                          tenant)  # fmt: skip
    assert [(r["turn_id"], r["model"], r["reply_message_id"]) for r in rows] == [
        ("turn-5", "gpt-4o-mini-2024-07-18", "out-5"), ("turn-6", "llama3.1:8b", "out-6"),
    ]  # fmt: skip
    # 1,200 in at $0.15/M + 300 out at $0.60/M; no price known for a local model.
    assert [r["cost_estimate_usd"] for r in rows] == [Decimal("0.00036"), None]
    first = rows[0]
    assert (first["tokens_in"], first["tokens_out"], first["latency_ms"]) == (1200, 300, 840)
    assert first["trigger_message_id"] == "SM1"
    assert orjson.loads(first["tool_calls"]) == [
        {"name": "search_knowledge", "arguments": {"query": "horário\ufffd"}, "accepted": True,
         "result": "Abrimos às 8h"}
    ]  # fmt: skip


async def test_a_decided_agent_turn_becomes_a_turn_row_and_a_bot_message(
    db: asyncpg.Connection,
) -> None:
    """Through the real decider: the turn's record, its reply and the hand-off it asked for."""
    await migrate(db)
    tenant = uuid.uuid4()
    cid = conv.conversation_id(tenant, CONTACT)
    turn = RecordAgentTurn(
        conversation_id=cid, turn_id="t1", trigger_message_sid="SM1", agent="faq", model="faq",
        prompt_hash="cd" * 32, reply="Vou chamar um atendente.",
        tool_calls=[ToolCall(name="handoff_to_human", arguments={"reason": "dúvida de preço"},
                             accepted=True)],
    )  # fmt: skip
    events = _decided(tenant, [register(tenant, ACCOUNT, SENDER),
                               inbound(tenant, "SM1", CONTACT, "Quanto custa?"),
                               _operator(tenant, turn, 2), _operator(tenant, turn, 3)])  # fmt: skip
    assert [e.type for e in events][-4:] == [
        "AgentReplied",
        "OutboundMessageRequested",
        "HandoffRequested",
        "CommandRejected",
    ]  # fmt: skip  (the same turn again: refused, never a second reply)
    async with db.transaction():
        await conversations.apply_batch(db, events)
    row = await db.fetchrow("SELECT * FROM agent_turns WHERE tenant_id = $1", tenant)
    assert row is not None
    assert (row["turn_id"], row["agent"], row["cost_estimate_usd"]) == ("t1", "faq", None)
    bot = await db.fetch(
        "SELECT message_id, body FROM messages WHERE tenant_id = $1 AND author = 'bot'", tenant
    )
    assert [(m["message_id"], m["body"]) for m in bot] == [
        (row["reply_message_id"], "Vou chamar um atendente.")
    ]
    state = await db.fetchval("SELECT state FROM conversations WHERE tenant_id = $1", tenant)
    assert state == "handoff_requested"
