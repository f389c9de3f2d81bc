"""The agent runner on the real broker and PostgreSQL, with the real decider and projector and
a fake OpenAI server reached through the real SDK.

A signed webhook becomes a turn: the model gets the tenant's prompt and the conversation, the
reply is decided and projected as the bot's message. Turns run concurrently (a slow model does
not serialise conversations), bursts become one turn, a hand-off silences the bot, a runner
started after messages arrived (or restarted after sending a turn) answers each exactly once,
and a suspended tenant's turn calls no model until the tenant is reactivated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import openai
import pytest
from fastapi.testclient import TestClient

from commands.agent_config import ConfigureAgent
from commands.tenant_lifecycle import ReactivateTenant, SuspendTenant
from events.envelope import CommandEnvelope, encode_command
from events.tenant import AgentSettings
from projections.database import APP_ROLE, with_user
from projections.tenants import get_tenant
from streams import kafka
from streams.agent import AgentOptions, run_agent
from streams.llm import OpenAIChat
from streams.topics import COMMANDS
from tests.integration import fake_openai as fake
from tests.integration.fake_openai import FakeOpenAI
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed, _get
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_rebuild import _send

pytestmark = pytest.mark.integration
WAIT_S = 30.0


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    server = FakeOpenAI()
    try:
        yield server
    finally:
        server.close()


@asynccontextmanager
async def runner(brokers: str, database_url: str, server: FakeOpenAI,
                 debounce_s: float = 0.0) -> AsyncIterator[None]:  # fmt: skip
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0,
                                timeout=10.0)  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(run_agent(
        brokers, stop, OpenAIChat(client), with_user(database_url, APP_ROLE),
        AgentOptions(debounce_s=debounce_s, max_in_flight=64),
    ))  # fmt: skip
    try:
        yield
    finally:
        stop.set()
        await task


def _contact(n: int) -> str:
    return f"whatsapp:+55119876510{n:02d}"


def _messages(client: TestClient, keyed: Keyed) -> list[dict[str, Any]]:
    """Every message of every conversation of the tenant, per conversation in log order."""
    out: list[dict[str, Any]] = []
    page = _get(client, "/v1/conversations", keyed, limit=200).json()
    for item in page["items"]:
        path = f"/v1/conversations/{item['conversation_id']}/messages"
        found = _get(client, path, keyed, limit=200).json()["items"]
        out += [{**m, "contact": item["contact"], "state": item["state"]} for m in found]
    return out


async def _until(probe: Callable[[], Any], done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = await asyncio.to_thread(probe)
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def _bot(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if m["author"] == "bot"]


async def test_a_message_gets_one_reply_from_the_model_with_the_prompt_and_history(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    llm: FakeOpenAI,
) -> None:  # fmt: skip
    client, a, _ = platform
    llm.script.append(fake.text("Olá! Abrimos às 8h."))
    async with runner(fresh_broker, database_url, llm):
        await asyncio.to_thread(_send, client, a, _contact(0), "Que horas vocês abrem?")
        found = await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 1)
        (reply,) = _bot(found)
        assert reply["body"] == "Olá! Abrimos às 8h."
        await asyncio.sleep(1.0)  # nothing more comes
        assert len(_bot(await asyncio.to_thread(_messages, client, a))) == 1
    (sent,) = llm.requests
    assert sent["messages"][0]["role"] == "system"
    assert sent["messages"][-1] == {"role": "user", "content": "Que horas vocês abrem?"}
    assert "whatsapp:" not in str(sent)  # the contact's number is not sent to the model


async def test_turns_run_concurrently_across_conversations(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    llm: FakeOpenAI,
) -> None:  # fmt: skip
    client, a, _ = platform
    conversations = 12
    llm.script.extend(fake.Scripted(content=f"resposta {n}", delay_s=1.0)
                      for n in range(conversations))  # fmt: skip
    async with runner(fresh_broker, database_url, llm):
        for n in range(conversations):
            await asyncio.to_thread(_send, client, a, _contact(n), "Oi")
        started = time.monotonic()
        found = await _until(lambda: _messages(client, a),
                             lambda m: len(_bot(m)) == conversations)  # fmt: skip
        took = time.monotonic() - started
    assert len(_bot(found)) == conversations
    # Twelve one-second model calls, one after the other, would take twelve seconds.
    assert took < conversations / 2, f"{took:.1f} s for {conversations} one-second turns"


async def test_a_burst_is_one_turn_and_a_handoff_silences_the_bot(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    llm: FakeOpenAI,
) -> None:  # fmt: skip
    client, a, _ = platform
    llm.script.append(fake.tool("handoff_to_human", '{"reason": "pediu uma pessoa"}'))
    async with runner(fresh_broker, database_url, llm, debounce_s=3.0):
        for body in ("Oi", "quero falar", "com uma pessoa"):
            await asyncio.to_thread(_send, client, a, _contact(1), body)
        found = await _until(lambda: _messages(client, a),
                             lambda m: m and m[0]["state"] == "handoff_requested")  # fmt: skip
        assert found[0]["state"] == "handoff_requested"
        await asyncio.to_thread(_send, client, a, _contact(1), "alguém aí?")
        await asyncio.sleep(3.0 + 2.0)  # past the debounce: a wrongful turn would have started
    (sent,) = llm.requests  # one turn for the burst, none once handed off
    assert [m["content"] for m in sent["messages"][1:]] == ["Oi", "quero falar", "com uma pessoa"]
    assert _bot(await asyncio.to_thread(_messages, client, a)) == []


async def test_a_runner_started_during_a_burst_answers_it_once(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    llm: FakeOpenAI,
) -> None:  # fmt: skip
    """A message decided just before the runner started keeps the rest of its debounce
    window: the messages right behind it are answered with it, in one turn."""
    client, a, _ = platform
    await asyncio.to_thread(_send, client, a, _contact(3), "Oi")
    await _until(lambda: _messages(client, a), lambda m: len(m) == 1)  # decided and projected
    llm.script.append(fake.text("Olá! Em que posso ajudar?"))
    async with runner(fresh_broker, database_url, llm, debounce_s=6.0):
        for body in ("quero marcar", "uma consulta"):
            await asyncio.to_thread(_send, client, a, _contact(3), body)
        await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 1)
    (sent,) = llm.requests
    assert [m["content"] for m in sent["messages"][1:]] == ["Oi", "quero marcar", "uma consulta"]


async def test_messages_that_arrived_while_no_runner_ran_are_answered_once(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    llm: FakeOpenAI,
) -> None:  # fmt: skip
    client, a, _ = platform
    for n in range(3):
        await asyncio.to_thread(_send, client, a, _contact(n), f"mensagem {n}")
    llm.script.extend(fake.text(f"resposta {n}") for n in range(3))
    async with runner(fresh_broker, database_url, llm):
        found = await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 3)
    assert len(_bot(found)) == 3
    # A second runner folds the same log: every message has an outcome, nothing runs again.
    async with runner(fresh_broker, database_url, llm):
        await asyncio.sleep(3.0)
    assert len(llm.requests) == 3
    assert len(_bot(await asyncio.to_thread(_messages, client, a))) == 3


async def test_the_daily_token_budget_stops_model_calls(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    llm: FakeOpenAI,
) -> None:  # fmt: skip
    """Once the tenant's tokens of the day reach its budget, no model is called: the next
    customer gets the tenant's fallback message and a person (a hand-off)."""
    client, a, _ = platform
    settings = AgentSettings(system_prompt="Você atende a Clínica.", daily_token_budget=10,
                             fallback_message="Uma pessoa já vai responder.")  # fmt: skip
    await _command(fresh_broker, command_envelope(a.tenant.tenant_id,
                                                  ConfigureAgent(settings=settings)))  # fmt: skip
    llm.script.append(fake.text("Olá! Abrimos às 8h."))  # usage: well over 10 tokens
    async with runner(fresh_broker, database_url, llm):
        await asyncio.to_thread(_send, client, a, _contact(0), "Que horas vocês abrem?")
        await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 1)
        await asyncio.to_thread(_send, client, a, _contact(1), "E aos sábados?")
        found = await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 2)
    assert len(llm.requests) == 1
    (fallback,) = [m for m in _bot(found) if m["contact"] == _contact(1)]
    assert fallback["body"] == "Uma pessoa já vai responder."
    assert fallback["state"] == "handoff_requested"


async def test_a_message_sent_during_a_turn_gets_its_own_reply_after_it(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    llm: FakeOpenAI,
) -> None:  # fmt: skip
    client, a, _ = platform
    llm.script.extend([fake.Scripted(content="resposta 1", delay_s=1.5), fake.text("resposta 2")])
    async with runner(fresh_broker, database_url, llm):
        await asyncio.to_thread(_send, client, a, _contact(2), "primeira")
        await asyncio.sleep(0.5)  # the first turn is running
        await asyncio.to_thread(_send, client, a, _contact(2), "segunda")
        found = await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 2)
    assert [m["body"] for m in _bot(found)] == ["resposta 1", "resposta 2"]
    first, second = llm.requests
    assert first["messages"][-1] == {"role": "user", "content": "primeira"}
    # The second turn saw the first reply: it answers what is left, not both again.
    assert [m["role"] for m in second["messages"][1:]] == ["user", "assistant", "user"]
    assert second["messages"][2]["content"] == "resposta 1"


async def test_a_suspended_tenants_turn_calls_no_model_until_the_tenant_is_reactivated(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    db: asyncpg.Connection, llm: FakeOpenAI,
) -> None:  # fmt: skip
    """A message decided just before the suspension, its turn due after it: the model is not
    called (B's later turn shows the runner at work), nor after a restart, and the turn runs,
    once, when the tenant is reactivated: the customer's message is answered, not dropped."""
    client, a, b = platform
    llm.script.extend([fake.text("Olá, aqui é B."), fake.text("Olá! Estamos de volta.")])

    async def suspension(suspended: bool) -> None:
        await _suspension(fresh_broker, db, a, suspended)

    async with runner(fresh_broker, database_url, llm, debounce_s=4.0):
        await asyncio.to_thread(_send, client, a, _contact(4), "Oi")  # due in 4 s
        await suspension(True)
        await asyncio.to_thread(_send, client, b, _contact(5), "Oi")  # due after A's
        await _until(lambda: _messages(client, b), lambda m: len(_bot(m)) == 1)
    assert len(llm.requests) == 1  # B's
    async with runner(fresh_broker, database_url, llm):  # a restart folds the suspension
        await asyncio.sleep(2.0)
    assert len(llm.requests) == 1
    assert _bot(await asyncio.to_thread(_messages, client, a)) == []

    async with runner(fresh_broker, database_url, llm):
        await asyncio.sleep(2.0)  # caught up with the log: the reactivation is read live
        await suspension(False)
        found = await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 1)
    (reply,) = _bot(found)
    assert reply["body"] == "Olá! Estamos de volta."
    assert len(llm.requests) == 2
    assert llm.requests[1]["messages"][-1] == {"role": "user", "content": "Oi"}


async def test_a_turn_whose_model_answers_after_the_suspension_runs_again_once_reactivated(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str,
    db: asyncpg.Connection, llm: FakeOpenAI,
) -> None:  # fmt: skip
    """The runner does not record a turn it knows the decider would only discard: the
    message keeps waiting for its turn, which runs again (the model once more) after the
    reactivation, and is answered."""
    client, a, _ = platform
    llm.script.extend([fake.Scripted(content="Resposta tardia", delay_s=3.0),
                       fake.text("Olá! Estamos de volta.")])  # fmt: skip
    async with runner(fresh_broker, database_url, llm):
        await asyncio.to_thread(_send, client, a, _contact(6), "Oi")
        for _ in range(100):
            if llm.requests:  # the model is working on it
                break
            await asyncio.sleep(0.05)
        await _suspension(fresh_broker, db, a, True)
        await asyncio.sleep(3.0)  # the model has answered by now
        await _suspension(fresh_broker, db, a, False)
        found = await _until(lambda: _messages(client, a), lambda m: len(_bot(m)) == 1)
    (reply,) = _bot(found)
    assert reply["body"] == "Olá! Estamos de volta."
    assert len(llm.requests) == 2


async def _suspension(brokers: str, db: asyncpg.Connection, keyed: Keyed, suspended: bool) -> None:
    """Suspend or reactivate the tenant, and wait until the directory shows it (decided)."""
    tenant_id = keyed.tenant.tenant_id
    body = SuspendTenant(reason="unpaid invoice") if suspended else ReactivateTenant()
    await _command(brokers, command_envelope(tenant_id, body))
    for _ in range(150):
        found = await get_tenant(db, tenant_id)
        if found is not None and found.suspended == suspended:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the suspension did not reach the tenant directory")


async def _command(brokers: str, envelope: CommandEnvelope) -> None:
    producer = kafka.producer(brokers)
    await producer.start()
    try:
        key, value, headers = encode_command(envelope)
        await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)
    finally:
        await producer.stop()
