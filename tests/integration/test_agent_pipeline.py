"""The agent runner's next turn for a conversation does not wait for the decider (ADR 0014).

Driven event by event (the decider's events folded by hand, no decider running), with the real
broker taking the runner's commands and a fake OpenAI server reached through the real SDK: a
message that came during a turn gets its own turn as soon as the first turn's result is in the
log, with the first reply in its history; the decision, when it comes, does not add that reply
twice, and a discarded turn's reply is taken out again. A fallback waits for the decision; a
turn's command names the undecided turns it built on; a conversation runs at most one
undecided turn ahead; a refused turn is that turn's outcome.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest

from events.conversation import (
    AgentReplied,
    AgentTurnDiscarded,
    ConversationEvent,
    ConversationStarted,
    InboundMessageReceived,
    OutboundMessageRequested,
)
from events.envelope import EventEnvelope, decode_command
from events.platform import CommandRejected
from streams import kafka
from streams.agent import AgentOptions, AgentRunner
from streams.llm import OpenAIChat
from streams.log import start_from_zero
from streams.topics import COMMANDS
from tests.integration import fake_openai as fake
from tests.integration.fake_openai import FakeOpenAI
from tests.integration.test_agent_runner import llm as llm  # the fixture

pytestmark = pytest.mark.integration
TENANT = uuid.UUID("6f1c0f0e-0000-4000-8000-00000000a9e1")
CID = "conv-pipeline"
CONTACT, SENDER = "whatsapp:+5511987650001", "whatsapp:+5511300000000"


class Log:
    """The decider's side, by hand: events folded into the runner in order."""

    def __init__(self, runner: AgentRunner) -> None:
        self.runner, self.seq = runner, 0

    def append(self, event: ConversationEvent | CommandRejected) -> None:
        self.seq += 1
        now = datetime.now(UTC)
        self.runner.fold(EventEnvelope(
            event_id=uuid.uuid4(), type=event.type, schema_version=event.schema_version,
            tenant_id=TENANT, tenant_seq=self.seq, stream=f"conversation:{CID}", occurred_at=now,
            recorded_at=now, correlation_id=uuid.uuid4(), causation_id=uuid.uuid4(),
            prev_hash="0" * 64, hash="0" * 64, payload=event.model_dump(mode="json"),
        ))  # fmt: skip

    def inbound(self, sid: str, body: str) -> None:
        now = datetime.now(UTC)
        self.append(InboundMessageReceived(
            conversation_id=CID, message_sid=sid, contact=CONTACT, sender=SENDER, body=body,
            received_at=now, window_open_until=now + timedelta(hours=24),
        ))  # fmt: skip

    def replied(self, trigger: str, reply: str) -> None:
        outbound = str(uuid.uuid4())
        self.append(AgentReplied(
            conversation_id=CID, turn_id=f"turn-{trigger}", trigger_message_sid=trigger,
            agent="llm", model="gpt-4o-mini", prompt_hash="0f" * 32, reply=reply,
            outbound_id=outbound, tokens_in=10, tokens_out=5, latency_ms=100,
        ))  # fmt: skip
        self.append(OutboundMessageRequested(conversation_id=CID, outbound_id=outbound,
                                             author="bot", contact=CONTACT, sender=SENDER,
                                             body=reply))  # fmt: skip


@asynccontextmanager
async def driven(
    brokers: str, server: FakeOpenAI, *, ticks: bool = True, debounce_s: float = 0.0
) -> AsyncIterator[tuple[AgentRunner, Log]]:
    """A runner whose loop ticks in the background (unless `ticks` is False: the test ticks
    it); the test folds the log into it."""
    producer = kafka.producer(brokers)
    await producer.start()
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0,
                                timeout=10.0)  # fmt: skip
    runner = AgentRunner(producer, None, OpenAIChat(client),
                         AgentOptions(debounce_s=debounce_s, max_in_flight=8))  # fmt: skip
    runner.schedule_pending()  # caught up with an empty log
    log = Log(runner)
    log.append(ConversationStarted(conversation_id=CID, contact=CONTACT, sender=SENDER))

    async def ticking() -> None:
        while ticks:
            await runner.tick()
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(ticking())
    try:
        yield runner, log
    finally:
        ticker.cancel()
        for task in list(runner.tasks):
            task.cancel()
        await producer.stop()
        await client.close()


async def _until(done: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not done():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _roles(request: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in request["messages"][1:]]


async def _builds_on(brokers: str) -> dict[str, list[str]]:
    """Each turn command in the log: its triggering message → the turns it says it built on."""
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        ends = await start_from_zero(consumer, COMMANDS)
        found: dict[str, list[str]] = {}
        while ends:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    command = decode_command(record.value)
                    if command.type == "RecordAgentTurn":
                        payload = command.payload
                        found[payload["trigger_message_sid"]] = payload["builds_on"]
            for tp in list(ends):
                if await consumer.position(tp) >= ends[tp]:
                    del ends[tp]
        return found
    finally:
        await consumer.stop()


async def test_the_next_turn_starts_when_the_model_answered_not_when_it_was_decided(
    fresh_broker: str, llm: FakeOpenAI
) -> None:
    llm.script.extend([fake.Scripted(content="resposta 1", delay_s=0.5),
                       fake.text("resposta 2")])  # fmt: skip
    async with driven(fresh_broker, llm) as (runner, log):
        log.inbound("SM1", "primeira")
        assert await _until(lambda: len(llm.requests) == 1, 5.0)
        log.inbound("SM2", "segunda")  # during the first turn
        # No decider runs: without the provisional reply the second turn would wait for an
        # outcome that never comes (30 s).
        assert await _until(lambda: len(llm.requests) == 2, 5.0), "the second turn waited"
        second = llm.requests[1]
        assert _roles(second) == [("user", "primeira"), ("assistant", "resposta 1"),
                                  ("user", "segunda")]  # fmt: skip
        assert await _until(lambda: not runner.running, 5.0)
        # The decisions come later: each reply is in the history once, after its message.
        log.replied("SM1", "resposta 1")
        log.replied("SM2", "resposta 2")
        history = [(s.role, s.text) for s in runner.conversations[CID].history]
        assert history == [("user", "primeira"), ("assistant", "resposta 1"),
                           ("user", "segunda"), ("assistant", "resposta 2")]  # fmt: skip
        assert not runner.conversations[CID].provisional
        await asyncio.sleep(0.5)
        assert len(llm.requests) == 2  # nothing was asked twice
    # The second turn says it was given the first reply before that was decided, so the
    # decider discards it if the first turn was discarded (tests/unit/test_agent_turns.py).
    assert await _builds_on(fresh_broker) == {"SM1": [], "SM2": ["SM1"]}


async def test_a_discarded_turns_reply_leaves_the_history(
    fresh_broker: str, llm: FakeOpenAI
) -> None:
    llm.script.append(fake.text("resposta 1"))
    async with driven(fresh_broker, llm) as (runner, log):
        log.inbound("SM1", "primeira")
        found = runner.conversations[CID]
        assert await _until(lambda: "SM1" in found.provisional, 5.0)
        assert [s.text for s in found.history] == ["primeira", "resposta 1"]
        await asyncio.sleep(0.5)
        assert len(llm.requests) == 1  # its own message is not asked about again meanwhile
        log.append(AgentTurnDiscarded(conversation_id=CID, turn_id="turn-SM1",
                                      trigger_message_sid="SM1", reason="not_bot"))  # fmt: skip
        assert [s.text for s in found.history] == ["primeira"]
        assert not found.provisional


async def test_after_a_fallback_the_next_turn_waits_for_the_decision(
    fresh_broker: str, llm: FakeOpenAI
) -> None:
    llm.script.extend([fake.Scripted(status=500, error=("server_error", "boom"), delay_s=0.3),
                       fake.text("resposta 2")])  # fmt: skip
    async with driven(fresh_broker, llm) as (runner, log):
        log.inbound("SM1", "primeira")
        assert await _until(lambda: len(llm.requests) == 1, 5.0)
        log.inbound("SM2", "segunda")
        found = runner.conversations[CID]
        assert await _until(lambda: "SM1" in found.submitted and not runner.running, 5.0)
        assert not found.provisional
        # The fallback hands the conversation off: the decider decides before any next turn.
        assert not await _until(lambda: len(llm.requests) == 2, 1.5)
        log.replied("SM1", "fallback")  # the decision (a hand-off would also discard SM2's)
        assert await _until(lambda: len(llm.requests) == 2, 5.0)


async def test_the_next_turn_runs_in_the_same_task_without_waiting_for_a_tick(
    fresh_broker: str, llm: FakeOpenAI
) -> None:
    llm.script.extend([fake.Scripted(content="resposta 1", delay_s=0.5),
                       fake.text("resposta 2")])  # fmt: skip
    async with driven(fresh_broker, llm, ticks=False) as (runner, log):
        log.inbound("SM1", "primeira")
        await runner.tick()  # the only tick: it starts SM1's turn
        assert await _until(lambda: len(llm.requests) == 1, 5.0)
        log.inbound("SM2", "segunda")
        assert await _until(lambda: len(llm.requests) == 2, 5.0), "SM2 waited for a tick"
        assert await _until(lambda: not runner.running, 5.0)


async def test_a_message_during_a_turn_still_keeps_its_debounce_window(
    fresh_broker: str, llm: FakeOpenAI
) -> None:
    llm.script.extend([fake.Scripted(content="resposta 1", delay_s=0.3),
                       fake.text("resposta 2")])  # fmt: skip
    async with driven(fresh_broker, llm, debounce_s=1.0) as (_, log):
        log.inbound("SM1", "primeira")
        assert await _until(lambda: len(llm.requests) == 1, 5.0)
        sent = time.monotonic()
        log.inbound("SM2", "segunda")  # its window ends 1 s from now, after SM1's turn
        assert await _until(lambda: len(llm.requests) == 2, 5.0)
        assert time.monotonic() - sent >= 0.9, "the burst window was cut short"


async def test_a_conversation_runs_at_most_one_undecided_turn_ahead(
    fresh_broker: str, llm: FakeOpenAI
) -> None:
    llm.script.extend([fake.Scripted(content="resposta 1", delay_s=0.4),
                       fake.Scripted(content="resposta 2", delay_s=0.4),
                       fake.text("resposta 3")])  # fmt: skip
    async with driven(fresh_broker, llm) as (_, log):
        log.inbound("SM1", "primeira")
        assert await _until(lambda: len(llm.requests) == 1, 5.0)
        log.inbound("SM2", "segunda")  # during turn 1: pipelined
        assert await _until(lambda: len(llm.requests) == 2, 5.0)
        log.inbound("SM3", "terceira")  # during turn 2, with turn 1 still undecided
        # No decider runs: a third turn would stack a third reply on two that may never go out.
        assert not await _until(lambda: len(llm.requests) == 3, 1.5), "ran two turns ahead"
        log.replied("SM1", "resposta 1")
        assert await _until(lambda: len(llm.requests) == 3, 5.0)
        assert _roles(llm.requests[2]) == [
            ("user", "primeira"), ("assistant", "resposta 1"), ("user", "segunda"),
            ("assistant", "resposta 2"), ("user", "terceira"),
        ]  # fmt: skip


async def test_a_refused_turn_leaves_the_history_and_is_not_asked_again(
    fresh_broker: str, llm: FakeOpenAI
) -> None:
    """The decider refused the turn's command (`CommandRejected`): the next turn is not shown
    that reply, does not wait for it or say it built on it, and the message is not re-asked."""
    llm.script.extend([fake.text("resposta 1"), fake.text("resposta 2")])
    async with driven(fresh_broker, llm) as (runner, log):
        log.inbound("SM1", "primeira")
        found = runner.conversations[CID]
        assert await _until(lambda: "SM1" in found.provisional and not runner.running, 5.0)
        turn_id = uuid.uuid5(TENANT, f"turn:{CID}:SM1")
        log.append(CommandRejected(command_id=str(turn_id), command_type="RecordAgentTurn",
                                   reason_code="unknown_trigger", reason="refused"))  # fmt: skip
        assert [s.text for s in found.history] == ["primeira"]
        await asyncio.sleep(0.5)
        assert len(llm.requests) == 1, "the refused message was asked about again"
        log.inbound("SM2", "segunda")
        assert await _until(lambda: len(llm.requests) == 2, 5.0)
        assert _roles(llm.requests[1]) == [("user", "primeira"), ("user", "segunda")]
        assert await _until(lambda: not runner.running, 5.0)
        assert runner.slots._value == 8  # every slot given back
    assert (await _builds_on(fresh_broker))["SM2"] == []
