"""A per-tenant rebuild (`zapflow projections rebuild NAME --tenant T`) against the real broker
and PostgreSQL: it repairs one tenant's rows to exactly what a projection from scratch gives,
leaves every other tenant's rows as they were (not even rewritten), and coordinates with a
live projector that is stopped, behind, or ahead of it (ADR 0016).

"What a projection from scratch gives" is a full blue/green rebuild of the same log
(`versions.rebuild`, the runner's code path, not the per-tenant one) compared row by row.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from fastapi.testclient import TestClient

from commands import conversation as conv
from commands.agent import RecordAgentTurn
from commands.agent_config import ConfigureAgent
from commands.operator import (
    CloseConversation,
    HandOffToHuman,
    RequestHandoff,
    RequestOutboundMessage,
    ReturnToBot,
)
from events.chain import seal
from events.conversation import ToolCall
from events.envelope import CommandEnvelope, EventEnvelope
from events.registry import Message
from events.tenant import AgentSettings, FaqEntry
from projections import agents, checkpoints, conversations, tenant_rebuild, versions
from projections.database import connect
from projections.versions import RebuildRefused
from streams.log import Position, append
from streams.tenant_book import TenantBook
from streams.topics import EVENTS
from tests.integration.test_conversation_projection import T0, _operator
from tests.integration.test_decider import inbound, register
from tests.integration.test_projections_status import cli_env as cli_env  # the fixture
from tests.integration.test_projections_status import run_cli
from tests.integration.test_projector import caught_up, ends, eventually, projector
from tests.integration.test_query_api import Keyed, _until
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_rebuild import _contact, _previews, _send

pytestmark = pytest.mark.integration

CONTACT = "whatsapp:+5511999990042"
OTHER = "whatsapp:+5511999990043"
TABLES = {conversations.NAME: conversations.TABLES, agents.NAME: agents.TABLES}


class _History:
    """One tenant's events as the decider would seal them, continued call after call."""

    def __init__(self, tenant: uuid.UUID) -> None:
        self.tenant = tenant
        self.book = TenantBook(tenant)
        self.n = 0

    def decide(self, *commands: CommandEnvelope) -> list[EventEnvelope]:
        out = []
        for command in commands:
            self.n += 1
            for draft, event in self.book.decide(command, T0 + timedelta(minutes=self.n)):
                envelope = seal(draft, self.book.head)
                self.book.record(envelope, event)
                out.append(envelope)
        return out

    def operator(self, *bodies: Message) -> list[EventEnvelope]:
        return self.decide(*(_operator(self.tenant, body, 100 + self.n + i)
                             for i, body in enumerate(bodies)))  # fmt: skip

    @property
    def seq(self) -> int:
        return self.book.head.tenant_seq


def _story(history: _History) -> list[EventEnvelope]:
    """Every kind of row: conversations, messages, contacts, command results, facts, turns."""
    t, cid = history.tenant, conv.conversation_id(history.tenant, CONTACT)
    turn = RecordAgentTurn(
        conversation_id=cid, turn_id="t1", trigger_message_sid=f"SM1{t.hex}", agent="faq",
        model="gpt-4o-mini", prompt_hash="cd" * 32, reply="Um momento.", tokens_in=10,
        tokens_out=5, tool_calls=[ToolCall(name="handoff_to_human", arguments={}, accepted=True)],
    )  # fmt: skip
    close = CloseConversation(conversation_id=cid, closed_by="maria@clinica")
    return [
        *history.decide(register(t), inbound(t, f"SM1{t.hex}", CONTACT, "Oi, bom dia")),
        *history.operator(turn, HandOffToHuman(conversation_id=cid, operator="maria@clinica"),
                          RequestOutboundMessage(conversation_id=cid, author="human", body="Olá"),
                          ReturnToBot(conversation_id=cid, operator="maria@clinica")),
        *history.decide(inbound(t, f"SM2{t.hex}", CONTACT, "PARAR")),
        *history.operator(close, close),  # closing twice: a rejection
        *history.decide(inbound(t, f"SM3{t.hex}", OTHER, "outra conversa")),
    ]  # fmt: skip


def _more(history: _History, n: int) -> list[EventEnvelope]:
    """Later events of the tenant: a message reopening the conversation, a hand-off."""
    t, cid = history.tenant, conv.conversation_id(history.tenant, CONTACT)
    return [
        *history.decide(inbound(t, f"SM{n}x{t.hex}", CONTACT, f"VOLTAR {n}")),
        *history.operator(RequestHandoff(conversation_id=cid, reason=f"pedido {n}")),
    ]


async def _rows(
    db: asyncpg.Connection, schema: str, tenant: uuid.UUID, name: str = conversations.NAME
) -> dict[str, list[str]]:
    """Every row of the tenant in `schema`, as text (generated columns too), sorted."""
    out = {}
    for table in TABLES[name]:
        rows = await db.fetch(
            f"SELECT t::text AS r FROM {schema}.{table} t WHERE tenant_id = $1 ORDER BY 1",  # noqa: S608
            tenant,
        )
        out[table] = [r["r"] for r in rows]
    return out


async def _physical(db: asyncpg.Connection, tenant: uuid.UUID) -> dict[str, set[str]]:
    """The tenant's row versions: a row rewritten even with the same values shows here."""
    out = {}
    for table in conversations.TABLES:
        rows = await db.fetch(
            f"SELECT xmin::text || ctid::text || t::text AS r FROM {table} t WHERE tenant_id = $1",  # noqa: S608
            tenant,
        )
        out[table] = {r["r"] for r in rows}
    return out


async def _damage(db: asyncpg.Connection, tenant: uuid.UUID) -> None:
    """What a projection bug could leave: wrong, missing and extra rows in every table."""
    await db.execute("UPDATE conversations SET last_message_preview = 'damaged', unread_count = 7 "
                     "WHERE tenant_id = $1", tenant)  # fmt: skip
    await db.execute("DELETE FROM messages WHERE tenant_id = $1 AND author = 'human'", tenant)
    await db.execute(
        "INSERT INTO messages (tenant_id, message_id, conversation_id, direction, author, body, "
        "created_at, tenant_seq) VALUES ($1, 'phantom', $2, 'inbound', 'contact', 'x', now(), 99)",
        tenant, uuid.uuid4(),
    )  # fmt: skip
    await db.execute("UPDATE contacts SET opted_out = NOT opted_out WHERE tenant_id = $1", tenant)
    await db.execute("DELETE FROM command_results WHERE tenant_id = $1 AND outcome = 'rejected'",
                     tenant)  # fmt: skip
    await db.execute("UPDATE conversation_facts SET code = 'bug' WHERE tenant_id = $1", tenant)
    await db.execute("UPDATE agent_turns SET cost_estimate_usd = 1 WHERE tenant_id = $1", tenant)


async def _seq(db: asyncpg.Connection, tenant: uuid.UUID, name: str = conversations.NAME) -> int:
    seqs = await checkpoints.tenant_seqs(db, [name], [tenant])
    return seqs.get((name, tenant), 0)


@asynccontextmanager
async def _live(
    bootstrap_servers: str, database_url: str, topic: str
) -> AsyncIterator[asyncio.Task[None]]:
    async with projector(bootstrap_servers, database_url, topic) as task:
        yield task


async def _caught_up(
    task: asyncio.Task[None], db: asyncpg.Connection, topic: str, positions: Sequence[Position]
) -> None:
    await eventually(task, caught_up(db, topic, ends(positions), conversations.NAME))


async def _fresh(bootstrap_servers: str, database_url: str, topic: str) -> str:
    """A projection of the whole log from scratch (a full rebuild); returns its schema."""
    rebuilt = await versions.rebuild(
        bootstrap_servers, database_url, conversations.NAME, topic, poll_s=0.2
    )
    return rebuilt.schema


async def test_only_the_tenants_rows_are_replaced_and_the_live_projector_skips_what_it_has(
    bootstrap_servers: str, database_url: str, migrated: asyncpg.Connection, topic: str,
    producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    """The live projector is stopped behind the log: the staging holds events it has not
    applied yet; once it runs again it must skip those and apply only the later ones."""
    db = migrated
    a, b = _History(uuid.uuid4()), _History(uuid.uuid4())
    positions = await append(producer, [*_story(a), *_story(b)], topic)
    async with _live(bootstrap_servers, database_url, topic) as task:
        await _caught_up(task, db, topic, positions)
    b_before = await _physical(db, b.tenant)
    assert all(b_before.values()), b_before  # B has rows in every table
    await _damage(db, a.tenant)
    behind = await _seq(db, a.tenant)
    positions += await append(producer, _more(a, 1), topic)  # the live projector is stopped

    rebuilt = await tenant_rebuild.rebuild_tenant(
        bootstrap_servers, database_url, conversations.NAME, a.tenant, topic
    )
    assert (rebuilt.version, rebuilt.schema, rebuilt.attempts) == (1, "public", 1)
    assert rebuilt.last_seq == a.seq > behind
    assert await _seq(db, a.tenant) == a.seq  # the live projector will skip what is in
    # Deleted: wrong or extra rows; inserted: right versions of wrong rows, and missing rows
    # (the human reply, the rejection, and what the stopped live projector has not applied).
    changed = {t: (c.deleted, c.inserted) for t, c in rebuilt.tables.items()}
    assert changed == {
        "conversations": (2, 2), "messages": (1, 2), "contacts": (2, 2),
        "command_results": (0, 2), "conversation_facts": (3, 3), "agent_turns": (1, 1),
    }, changed  # fmt: skip
    assert await _physical(db, b.tenant) == b_before  # not one of B's rows rewritten
    assert not await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild%'")

    async with _live(bootstrap_servers, database_url, topic) as task:
        positions += await append(producer, _more(a, 2), topic)
        await _caught_up(task, db, topic, positions)
        assert await _seq(db, a.tenant) == a.seq
        fresh = await _fresh(bootstrap_servers, database_url, topic)
    for tenant in (a.tenant, b.tenant):
        assert await _rows(db, "public", tenant) == await _rows(db, fresh, tenant)
    assert await _physical(db, b.tenant) == b_before
    # Again, now on the version the full rebuild made active, whose rows are right: the
    # rebuild targets it, and finds nothing to change.
    again = await tenant_rebuild.rebuild_tenant(
        bootstrap_servers, database_url, conversations.NAME, a.tenant, topic
    )
    assert (again.version, again.schema, again.last_seq) == (2, fresh, a.seq)
    assert {(c.deleted, c.inserted) for c in again.tables.values()} == {(0, 0)}


async def test_a_live_projector_ahead_of_the_staging_makes_the_rebuild_read_on(
    bootstrap_servers: str, database_url: str, migrated: asyncpg.Connection, topic: str,
    producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    """Between the staging's last read and the swap the live projector applies more of the
    tenant's events: the swap must notice, write nothing, read on, and swap them in too."""
    db = migrated
    a, b = _History(uuid.uuid4()), _History(uuid.uuid4())
    positions = await append(producer, [*_story(a), *_story(b)], topic)
    async with _live(bootstrap_servers, database_url, topic) as task:
        await _caught_up(task, db, topic, positions)
        await _damage(db, a.tenant)
        b_before = await _physical(db, b.tenant)
        rows_at: dict[int, dict[str, list[str]]] = {}

        async def race(attempt: int) -> None:
            rows_at[attempt] = await _rows(db, "public", a.tenant)
            if attempt == 1:
                positions.extend(await append(producer, _more(a, 1), topic))
                await eventually(task, lambda: _applied(db, a.tenant, a.seq))

        rebuilt = await tenant_rebuild.rebuild_tenant(
            bootstrap_servers, database_url, conversations.NAME, a.tenant, topic,
            before_swap=race,
        )  # fmt: skip
        assert (rebuilt.attempts, rebuilt.last_seq) == (2, a.seq)
        assert "damaged" in str(rows_at[2])  # the first attempt replaced nothing
        assert "VOLTAR 1" in str(await _rows(db, "public", a.tenant))
        assert await _physical(db, b.tenant) == b_before
        fresh = await _fresh(bootstrap_servers, database_url, topic)
    assert await _rows(db, "public", a.tenant) == await _rows(db, fresh, a.tenant)


async def _applied(db: asyncpg.Connection, tenant: uuid.UUID, seq: int) -> bool:
    return await _seq(db, tenant) >= seq


async def test_agent_settings_are_rebuilt_per_tenant_too(
    bootstrap_servers: str, database_url: str, migrated: asyncpg.Connection, topic: str,
    producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    db = migrated
    a, b = _History(uuid.uuid4()), _History(uuid.uuid4())
    faq = [FaqEntry(question="Qual o horário?", answer="Das 8h às 18h."),
           FaqEntry(question="Onde fica?", answer="Rua A, 1.")]  # fmt: skip
    events = []
    for history in (a, b):
        settings = AgentSettings(system_prompt=f"Clínica {history.tenant}", faq=faq)
        events += history.decide(register(history.tenant))
        events += history.operator(ConfigureAgent(settings=settings))
    positions = await append(producer, events, topic)
    async with _live(bootstrap_servers, database_url, topic) as task:
        await eventually(task, caught_up(db, topic, ends(positions), agents.NAME))
    clean = await _rows(db, "public", a.tenant, agents.NAME)
    b_rows = await _rows(db, "public", b.tenant, agents.NAME)
    await db.execute("DELETE FROM faq_entries WHERE tenant_id = $1 AND position = 1", a.tenant)
    await db.execute("UPDATE faq_entries SET answer = 'errado' WHERE tenant_id = $1", a.tenant)
    await db.execute("UPDATE agent_settings SET settings = '{}' WHERE tenant_id = $1", a.tenant)

    rebuilt = await tenant_rebuild.rebuild_tenant(
        bootstrap_servers, database_url, agents.NAME, a.tenant, topic
    )
    assert (rebuilt.version, rebuilt.schema, rebuilt.last_seq) == (None, "public", a.seq)
    changed = {t: (c.rows, c.deleted, c.inserted) for t, c in rebuilt.tables.items()}
    assert changed == {"agent_settings": (1, 1, 1), "faq_entries": (2, 1, 2)}
    assert await _rows(db, "public", a.tenant, agents.NAME) == clean
    assert await _rows(db, "public", b.tenant, agents.NAME) == b_rows


async def test_what_the_rebuild_refuses_changes_nothing(
    bootstrap_servers: str, database_url: str, migrated: asyncpg.Connection, topic: str,
    producer: AIOKafkaProducer,
) -> None:  # fmt: skip
    db = migrated
    a = _History(uuid.uuid4())
    positions = await append(producer, _story(a), topic)
    async with _live(bootstrap_servers, database_url, topic) as task:
        await _caught_up(task, db, topic, positions)
    await _damage(db, a.tenant)
    damaged = await _rows(db, "public", a.tenant)

    async def rebuild(name: str, tenant: uuid.UUID) -> tenant_rebuild.TenantRebuilt:
        return await tenant_rebuild.rebuild_tenant(
            bootstrap_servers, database_url, name, tenant, topic
        )

    with pytest.raises(versions.UnknownProjection, match="it can rebuild: agent_settings, conv"):
        await rebuild("tenant_directory", a.tenant)
    with pytest.raises(tenant_rebuild.UnknownTenant, match="not in the tenant directory"):
        await rebuild(conversations.NAME, uuid.uuid4())
    # In the directory but not in this log (say, a log reset and not restored): rebuilt from the
    # log, the tenant would lose every row.
    ghost = uuid.uuid4()
    await db.execute(
        "INSERT INTO tenants (tenant_id, name, twilio_account_sid, twilio_auth_token_encrypted, "
        "api_key_sha256, registered_at, updated_seq) VALUES ($1, 'x', 'AC', 'x', $2, now(), 1)",
        ghost, ghost.hex * 2,
    )  # fmt: skip
    with pytest.raises(RebuildRefused, match="holds no record of tenant"):
        await rebuild(conversations.NAME, ghost)
    # One rebuild of a tenant at a time.
    lock = f"zapflow.tenant_rebuild:{conversations.NAME}:{a.tenant}"
    await db.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", lock)
    with pytest.raises(RebuildRefused, match="already running"):
        await rebuild(conversations.NAME, a.tenant)
    await db.execute("SELECT pg_advisory_unlock(hashtextextended($1, 0))", lock)
    # The swap takes the lock a live batch holds on the tenant's partition: while a batch is
    # under way there (here, a transaction holding it), nothing is replaced.
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT FROM projection_checkpoints WHERE projection = 'conversations' "
                "AND topic = $1 AND partition = $2 FOR UPDATE", topic, positions[0].partition,
            )  # fmt: skip
            with pytest.raises(RebuildRefused, match="could not lock the live projector's"):
                await tenant_rebuild.rebuild_tenant(
                    bootstrap_servers, database_url, conversations.NAME, a.tenant, topic,
                    lock_timeout_s=0.5,
                )  # fmt: skip
    finally:
        await blocker.close()
    # A log shorter than the live projector's position: a reset log.
    await db.execute("UPDATE projection_checkpoints SET next_offset = next_offset + 5 "
                     "WHERE projection = 'conversations'")  # fmt: skip
    with pytest.raises(RebuildRefused, match="the log was reset and not restored"):
        await rebuild(conversations.NAME, a.tenant)
    assert await _rows(db, "public", a.tenant) == damaged
    assert not await db.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild%'")


@pytest.mark.usefixtures("cli_env")
async def test_the_command_repairs_one_tenant_while_webhooks_and_queries_go_on(
    platform: tuple[TestClient, Keyed, Keyed], db: asyncpg.Connection, fresh_broker: str,
    database_url: str, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The whole platform runs (decider, live projector, API); A's rows are damaged; the
    command runs while both tenants' webhooks keep arriving and A's conversations are listed
    in a loop. Every answer is A before or A after, never between; B's rows are never
    rewritten; in the end A's and B's rows are what a projection from scratch gives."""
    client, a, b = platform
    ta, tb = a.tenant.tenant_id, b.tenant.tenant_id
    for n in range(3):
        await asyncio.to_thread(_send, client, a, _contact(n), f"mensagem {n}")
    await asyncio.to_thread(_send, client, b, _contact(0), "segredo de B")
    expected = {_contact(n): f"mensagem {n}" for n in range(3)}
    assert await _until(lambda: _previews(client, a), lambda p: p == expected) == expected
    only_b = {_contact(0): "segredo de B"}
    assert await _until(lambda: _previews(client, b), lambda p: p == only_b) == only_b
    await db.execute("UPDATE conversations SET last_message_preview = 'damaged' "
                     "WHERE tenant_id = $1 AND contact <> $2", ta, _contact(2))  # fmt: skip
    await db.execute("DELETE FROM conversations WHERE tenant_id = $1 AND contact = $2",
                     ta, _contact(2))  # fmt: skip
    await db.execute("DELETE FROM messages WHERE tenant_id = $1 AND body = 'mensagem 1'", ta)
    await db.execute("UPDATE contacts SET opted_out = true WHERE tenant_id = $1", ta)
    damaged = {_contact(0): "damaged", _contact(1): "damaged"}
    assert await asyncio.to_thread(_previews, client, a) == damaged
    b_before = await _physical(db, tb)

    command = ("projections", "rebuild", "conversations", "--tenant", str(ta))
    rebuild = asyncio.create_task(run_cli(capsys, *command))
    pages: list[dict[str, str]] = []
    sent = 10
    while not rebuild.done() and sent < 90:  # A's and B's new contacts write meanwhile
        await asyncio.to_thread(_send, client, a, _contact(sent), f"A durante {sent}")
        await asyncio.to_thread(_send, client, b, _contact(sent), f"B durante {sent}")
        pages.append(await asyncio.to_thread(_previews, client, a))
        sent += 1
    code, out, err = await rebuild
    assert code == 0, err
    seen = [_version(page, damaged, expected) for page in pages]
    assert seen, "no query ran during the rebuild"
    assert seen[0] == "before", seen
    assert set(seen) <= {"before", "after"}, seen  # never half: one transaction
    assert seen == sorted(seen, key=lambda v: v != "before"), seen  # and never back
    # Deleted: the rows that were wrong (a conversation the live projector had only started
    # may count too); inserted: their right versions and, besides, what the staging had read
    # and the live projector not yet applied (it will skip those).
    deleted = {t: c["deleted"] for t, c in out["tables"].items()}
    inserted = {t: c["inserted"] for t, c in out["tables"].items()}
    assert deleted.pop("conversations") >= 2, out
    assert deleted == {"messages": 0, "contacts": 3, "command_results": 0,
                       "conversation_facts": 0, "agent_turns": 0}, out  # fmt: skip
    assert (inserted["conversations"], inserted["messages"], inserted["contacts"]) >= (3, 1, 3)
    assert (out["projection"], out["tenant_id"], out["version"]) == ("conversations", str(ta), 1)

    await asyncio.to_thread(_send, client, a, _contact(99), "depois")
    await asyncio.to_thread(_send, client, b, _contact(99), "B depois")
    final_a = expected | {_contact(n): f"A durante {n}" for n in range(10, sent)}
    final_a[_contact(99)] = "depois"
    final_b = only_b | {_contact(n): f"B durante {n}" for n in range(10, sent)}
    final_b[_contact(99)] = "B depois"
    assert await _until(lambda: _previews(client, a), lambda p: p == final_a) == final_a
    assert await _until(lambda: _previews(client, b), lambda p: p == final_b) == final_b
    b_after = await _physical(db, tb)
    assert all(b_before[t] <= b_after[t] for t in b_before)  # no row of B rewritten
    added = {t: len(b_after[t] - b_before[t]) for t in b_before}
    new_b = sent - 10 + 1  # B's new contacts, each one conversation and one message
    assert added == {"conversations": new_b, "messages": new_b, "contacts": new_b,
                     "command_results": 0, "conversation_facts": 0, "agent_turns": 0}  # fmt: skip

    code, rows, err = await run_cli(capsys, "projections", "status")
    assert code == 0, err
    assert not [r for r in rows if r["projection"].startswith("rebuild")]
    code, listed, _ = await run_cli(capsys, "projections", "versions")
    assert [(v["version"], v["state"]) for v in listed] == [(1, "active")]

    fresh = await _fresh(fresh_broker, database_url, EVENTS)
    for tenant in (ta, tb):
        assert await _rows(db, "public", tenant) == await _rows(db, fresh, tenant)


def _version(page: dict[str, str], before: dict[str, str], after: dict[str, str]) -> str:
    """Which A a page of conversations shows, looking at the contacts that were damaged."""
    core = {contact: preview for contact, preview in page.items() if contact in after}
    return "before" if core == before else "after" if core == after else f"half: {core}"


@pytest.mark.usefixtures("cli_env")
async def test_the_command_refuses_bad_input_and_changes_nothing(
    migrated: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant = str(uuid.uuid4())
    code, out, err = await run_cli(capsys, "projections", "rebuild", "contacts", "--tenant", tenant)
    assert (code, out) == (2, None)
    assert "unknown projection 'contacts' for a per-tenant rebuild; it can rebuild: " \
           "agent_settings, conversations" in err  # fmt: skip
    code, out, err = await run_cli(
        capsys, "projections", "rebuild", "conversations", "--tenant", tenant
    )
    assert (code, out) == (2, None)
    assert f"zapflow: error: unknown tenant {tenant}: not in the tenant directory" in err
    with pytest.raises(SystemExit) as exited:
        await run_cli(capsys, "projections", "rebuild", "conversations", "--tenant", "A")
    assert exited.value.code == 2
    assert "argument --tenant: not a tenant id: 'A'" in capsys.readouterr().err
    assert not await migrated.fetchval(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'rebuild%'"
    )
    assert not await migrated.fetchval("SELECT count(*) FROM projection_tenant_seq")
