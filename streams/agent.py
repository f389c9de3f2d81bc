"""The agent runner: turns for the customers' messages, many at once, never lost (ADR 0014).

A group-less consumer of `zapflow.events` that commits nothing: at start it folds the whole log
(with the decider's own `evolve`) into each conversation's state and recent messages and each
tenant's agent settings and tokens spent today, so the work left is simply every conversation
whose newest inbound message has no outcome yet (no `AgentReplied`/`AgentTurnDiscarded`) while
the bot owns it; those turns run first. From then on each `InboundMessageReceived` schedules a
turn for its conversation after the debounce window (a burst becomes one turn, for its newest
message).

Turns run concurrently up to `max_in_flight` (backpressure: further due turns wait for a slot),
one at a time per conversation. A turn's result goes to the decider as `RecordAgentTurn`, whose
command id is derived from (conversation, message): a turn run twice (a crash after sending it)
is one command, and the decider keeps at most one outcome per message anyway (ADR 0007). A
message that arrives while its conversation's turn is running gets a turn of its own after it,
with the earlier reply in its history: every message is answered. It need not wait for the
decider's round trip: once the earlier turn's result is in the log, its reply is placed in the
history provisionally (taken out again if the decider discards that turn, which then discards
the next one too, as the conversation changed). Only a fallback, a hand-off or a close waits
for the decision.

A suspended tenant's turns are held, not run (ADR 0018): the suspension is folded from the log,
a due turn of that tenant calls no model and records nothing, and waits for `TenantReactivated`;
a turn whose model answered after the suspension was folded is not recorded either (the decider
would only discard it) and runs again after the reactivation. So no tokens are spent while a
tenant is suspended, and no customer's message is left without its turn because of it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Final
from uuid import UUID, uuid5

import asyncpg
from aiokafka import AIOKafkaProducer

from commands import conversation as conv
from commands.agent import RecordAgentTurn
from commands.agent_config import FAQ_MODEL, effective
from events.catalog import EVENT_REGISTRY
from events.conversation import (
    CONVERSATION_EVENTS,
    AgentReplied,
    AgentTurnDiscarded,
    ConversationEvent,
    InboundMessageReceived,
    OutboundMessageRequested,
)
from events.envelope import EventEnvelope
from events.platform import CommandRejected
from events.tenant import AgentConfigured, AgentSettings, TenantReactivated, TenantSuspended
from projections import agents as agent_store
from streams import kafka
from streams.llm import CLOSE, HANDOFF, FaqAgent, Model, Role, TurnRequest, TurnResult
from streams.log import follow, stop_within, submit
from streams.topics import EVENTS

log = logging.getLogger("zapflow.agent")

HISTORY_MESSAGES: Final = 20
HISTORY_CHARS: Final = 12_000
"""About 3,000 tokens of recent conversation (4 characters a token)."""
OUTCOME_WAIT_S: Final = 30.0
AHEAD: Final = 1
"""Undecided pipelined turns a conversation's next turn may build on: one keeps a busy
conversation's turns back to back (the decision comes long before the next model answers),
and a stopped decider holds the conversation back after two turns, however long it is down,
instead of letting it run ahead on replies that may never be sent. Every command gets its
outcome once the decider runs: a decision, or a `CommandRejected` (`AgentRunner._refused`)."""
_TICK_S: Final = 0.02
_RETRY_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class AgentOptions:
    debounce_s: float = 1.5
    max_in_flight: int = 256
    default_model: str = "gpt-4o-mini"


@dataclass(frozen=True, slots=True)
class Said:
    role: Role
    text: str
    message_sid: str | None = None


@dataclass(slots=True)
class AgentConversation:
    """One conversation as the agent knows it: the decider's state and what the model is shown.

    `remember` is the one fold of both, for the runner and for what-if reprocessing (ADR 0017),
    so a reprocessed turn is given the history the live runner gave it."""

    tenant_id: UUID
    state: conv.Conversation
    history: deque[Said] = field(default_factory=lambda: deque(maxlen=HISTORY_MESSAGES))
    replies_to: dict[str, str] = field(default_factory=dict)
    """Outbound id of a turn's reply → the message the turn answered (until the reply is seen)."""
    submitted: dict[str, float] = field(default_factory=dict)
    """Messages whose turn this process sent to the decider (not yet seen decided), and when.
    The conversation's next turn waits for that outcome, so it sees the reply in its history,
    unless the reply is already there provisionally (`provisional`)."""
    refused: set[str] = field(default_factory=set)
    """Messages whose turn's command this process saw refused."""
    provisional: dict[str, Said] = field(default_factory=dict)
    """Message → the reply its turn sent to the decider, placed in the history when the model
    answered rather than when the decider's `OutboundMessageRequested` is read, so the next turn
    need not wait for the decision (ADR 0014); taken out again if the turn is discarded."""

    def remember(self, event: ConversationEvent) -> None:
        self.state = conv.evolve(self.state, event)
        match event:
            case InboundMessageReceived():
                self.history.append(Said("user", event.body, event.message_sid))
            case OutboundMessageRequested() if event.body:
                trigger = self.replies_to.pop(event.outbound_id, None)
                placed = self.provisional.pop(trigger, None) if trigger is not None else None
                if placed is None or placed.text != event.body:
                    self._unplace(placed)
                    _place(self, Said("assistant", event.body), trigger)
            case AgentReplied() if event.outbound_id is not None:
                self.replies_to[event.outbound_id] = event.trigger_message_sid
            case AgentReplied() | AgentTurnDiscarded():
                self._unplace(self.provisional.pop(event.trigger_message_sid, None))
            case _:
                pass

    def place_provisionally(self, trigger: str, reply: str) -> None:
        """The reply of `trigger`'s turn, sent to the decider and not yet seen decided."""
        said = Said("assistant", reply)
        _place(self, said, trigger)
        self.provisional[trigger] = said

    def undecided(self) -> list[str]:
        """Messages whose turn's reply is in the history provisionally and not yet decided:
        what the next turn builds on (`RecordAgentTurn.builds_on`)."""
        return [trigger for trigger in self.provisional if trigger in self.submitted]

    def refuse(self, trigger: str) -> None:
        """The decider refused `trigger`'s turn (`CommandRejected`): its reply leaves the
        history, the next turn neither waits for it nor builds on it, and the message is not
        asked about again (the same command would be refused again)."""
        self.submitted.pop(trigger, None)
        self._unplace(self.provisional.pop(trigger, None))
        self.refused.add(trigger)

    def _unplace(self, said: Said | None) -> None:
        if said is None:
            return
        for i, entry in enumerate(self.history):
            if entry is said:
                del self.history[i]
                return


@dataclass(slots=True)
class _Tenant:
    settings: AgentSettings | None = None
    tokens_day: date | None = None
    tokens_today: int = 0
    last_seq: int = 0
    suspended: bool = False
    held: set[str] = field(default_factory=set)
    """Conversations whose turn waits for the tenant's reactivation."""


@dataclass(slots=True)
class AgentRunner:
    """Folds events, schedules and runs turns; `run_agent` drives it."""

    producer: AIOKafkaProducer
    reader: asyncpg.Pool | None
    llm: Model | None
    options: AgentOptions
    clock: Callable[[], float] = time.monotonic
    faq: FaqAgent = field(default_factory=FaqAgent)
    conversations: dict[str, AgentConversation] = field(default_factory=dict)
    tenants: dict[UUID, _Tenant] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    arrived: dict[str, datetime] = field(default_factory=dict)
    """When each conversation's newest message was recorded, as folded during the catch-up."""
    running: set[str] = field(default_factory=set)
    turns: dict[tuple[UUID, str], tuple[str, str]] = field(default_factory=dict)
    """(tenant, turn id) of each command this process submitted and has not seen decided →
    (conversation, triggering message): how a `CommandRejected` finds its turn."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    caught_up: bool = False
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.options.max_in_flight)

    # -- folding ---------------------------------------------------------------------------

    def fold(self, envelope: EventEnvelope) -> None:
        tenant = self.tenants.setdefault(envelope.tenant_id, _Tenant())
        if envelope.tenant_seq <= tenant.last_seq:
            return  # a duplicate in the log
        tenant.last_seq = envelope.tenant_seq
        event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
        if isinstance(event, AgentConfigured):
            tenant.settings = event.settings
            return
        if isinstance(event, TenantSuspended):
            tenant.suspended = True
            return
        if isinstance(event, TenantReactivated):
            tenant.suspended = False
            for cid in tenant.held:  # held only once caught up: due at once
                self.due.setdefault(cid, self.clock())
            tenant.held.clear()
            return
        if isinstance(event, CommandRejected):
            self._refused(envelope.tenant_id, event)
            return
        if not isinstance(event, CONVERSATION_EVENTS):
            return
        cid = event.conversation_id
        found = self.conversations.get(cid)
        if found is None:
            found = self.conversations[cid] = AgentConversation(envelope.tenant_id,
                                                                conv.Conversation(cid))  # fmt: skip
        found.remember(event)
        match event:
            case InboundMessageReceived():
                if self.caught_up:
                    self.due[cid] = self.clock() + self.options.debounce_s
                else:
                    self.arrived[cid] = envelope.recorded_at
            case AgentTurnDiscarded():
                self._outcome(cid, found, event)
            case AgentReplied():
                self._outcome(cid, found, event)
                day = envelope.recorded_at.astimezone(UTC).date()
                if tenant.tokens_day != day:
                    tenant.tokens_day, tenant.tokens_today = day, 0
                tenant.tokens_today += event.tokens_in + event.tokens_out
            case _:
                pass

    name: str = "agent"

    def caught_up_with_log(self) -> None:
        count = self.schedule_pending()
        log.info("agent caught up with the log; %d conversations wait for a turn", count)

    async def tick(self) -> None:
        await self.start_due()

    def _outcome(
        self, cid: str, found: AgentConversation, event: AgentReplied | AgentTurnDiscarded
    ) -> None:
        """A turn's outcome is in: a message that came during that turn can have its own now."""
        self.turns.pop((found.tenant_id, event.turn_id), None)
        if found.submitted.pop(event.trigger_message_sid, None) is not None and self.caught_up:
            self.due.setdefault(cid, self.clock())

    def _refused(self, tenant_id: UUID, event: CommandRejected) -> None:
        """The decider refused one of this process's turns: that is its outcome here."""
        turn = self.turns.pop((tenant_id, event.command_id), None)
        if turn is None:
            return  # another process's turn, or a command that is not a turn
        cid, trigger = turn
        ids = {"tenant_id": str(tenant_id), "command_id": event.command_id}
        log.warning("agent turn refused by the decider (%s)", event.reason_code, extra=ids)
        self.conversations[cid].refuse(trigger)  # never forgotten once folded
        self.due.setdefault(cid, self.clock())

    def schedule_pending(self) -> int:
        """After the catch-up: every conversation whose newest message still waits for a turn."""
        self.caught_up = True
        now, wall = self.clock(), datetime.now(UTC)
        pending = [cid for cid, c in self.conversations.items() if _waiting(c, now)]
        for cid in pending:
            # A burst still arriving while the log was read keeps the rest of its debounce
            # window (a runner started mid-burst answers it once); older messages run now.
            age = (wall - self.arrived.get(cid, wall)).total_seconds()
            self.due.setdefault(cid, now + max(0.0, self.options.debounce_s - age))
        self.arrived.clear()
        return len(pending)

    # -- turns ------------------------------------------------------------------------------

    async def start_due(self) -> None:
        """Start every due turn there is a slot for; waits for a slot (backpressure)."""
        now = self.clock()
        for cid in [cid for cid, at in self.due.items() if at <= now and cid not in self.running]:
            found = self.conversations.get(cid)
            del self.due[cid]
            if found is None or not _waiting(found, now):
                continue
            tenant = self.tenants[found.tenant_id]
            if tenant.suspended:
                tenant.held.add(cid)
                continue
            await self.slots.acquire()
            self.running.add(cid)
            trigger = _newest(found)
            found.submitted[trigger] = self.clock()
            task = asyncio.create_task(self._turn(cid, found, trigger))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _turn(self, cid: str, found: AgentConversation, trigger: str) -> None:
        """The conversation's turn for `trigger`, then (pipelined) the turn of a message that
        came during it, in the same task and slot, without waiting for the loop's next tick."""
        try:
            while True:
                builds_on = found.undecided()
                result = await self._result(found, trigger)
                tenant = self.tenants[found.tenant_id]
                if tenant.suspended:  # suspended during the model call: the decider discards
                    found.submitted.pop(trigger, None)
                    tenant.held.add(cid)
                    log.info("agent turn held: the tenant was suspended during it",
                             extra={"tenant_id": str(found.tenant_id)})  # fmt: skip
                    return
                await self._record(cid, found.tenant_id, trigger, result, builds_on)
                if trigger not in found.submitted or not pipelines(result):
                    return  # decided (or refused) already, or the next turn waits for that
                found.submitted[trigger] = self.clock()  # in the log: its outcome is due now
                assert result.reply is not None  # for mypy: `pipelines` checked it
                found.place_provisionally(trigger, result.reply)
                if found.state.last_inbound_sid == trigger:
                    return
                now = self.clock()  # a message came during this turn: its turn, now or when due
                if (self.due.setdefault(cid, now) > now or tenant.suspended
                        or self.slots.locked() or not _waiting(found, now)):  # fmt: skip
                    # The loop's tick takes it: a debounce window open, held, every slot
                    # taken (the conversations waiting for one go first), or not to be run.
                    return
                del self.due[cid]
                trigger = _newest(found)
                found.submitted[trigger] = now
        except Exception:
            found.submitted.pop(trigger, None)  # not sent: a later look retries it
            log.exception("agent turn failed", extra={"tenant_id": str(found.tenant_id)})
            self.due.setdefault(cid, self.clock() + _RETRY_S)
        finally:
            self.running.discard(cid)
            self.slots.release()

    async def _result(self, found: AgentConversation, trigger: str) -> TurnResult:
        tenant = self.tenants[found.tenant_id]
        model, request = turn_request(found, tenant.settings, self.llm, self.faq,
                                      self.options.default_model)  # fmt: skip
        settings, name = request.settings, request.model
        budget = settings.daily_token_budget
        today = datetime.now(UTC).date()
        spent = tenant.tokens_today if tenant.tokens_day == today else 0
        if model is self.llm and budget is not None and spent >= budget:
            return TurnResult("llm", name, "0" * 64, reply=settings.fallback_message,
                              fallback_reason="token_budget_exhausted")  # fmt: skip

        async def knowledge(query: str) -> list[str]:
            return await self._search(found.tenant_id, query)

        return await model.turn(request, knowledge)

    async def _search(self, tenant_id: UUID, query: str) -> list[str]:
        if self.reader is None:
            return []
        async with self.reader.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant_id))
            return [m.answer for m in await agent_store.search_faq(conn, tenant_id, query)]

    async def _record(
        self, cid: str, tenant_id: UUID, trigger: str, result: TurnResult, builds_on: list[str]
    ) -> None:
        turn_id = uuid5(tenant_id, f"turn:{cid}:{trigger}")
        command = turn_command(cid, trigger, turn_id, result, builds_on)
        self.turns[(tenant_id, str(turn_id))] = (cid, trigger)
        await submit(self.producer, tenant_id, turn_id, command, datetime.now(UTC), _RETRY_S)


def turn_command(
    cid: str, trigger: str, turn_id: UUID, result: TurnResult, builds_on: Sequence[str] = ()
) -> RecordAgentTurn:
    """What the decider is asked to record for a turn's result (`builds_on`: the undecided
    turns whose replies were in its history)."""
    return RecordAgentTurn(
        conversation_id=cid, turn_id=str(turn_id), trigger_message_sid=trigger,
        builds_on=list(builds_on),
        agent=result.agent, model=result.model, prompt_hash=result.prompt_hash,
        reply=result.reply, tool_calls=result.tool_calls, tokens_in=result.tokens_in,
        tokens_out=result.tokens_out, latency_ms=result.latency_ms,
        fallback_reason=result.fallback_reason,
    )  # fmt: skip


def _waiting(found: AgentConversation, now: float) -> bool:
    """The newest message has no outcome and was not refused, the bot owns the conversation,
    no turn of it awaits its outcome (the next turn must see the previous reply, unless that
    is in the history provisionally and at most `AHEAD` such turns are undecided; a
    non-provisional outcome that never comes stops being waited for after `OUTCOME_WAIT_S`),
    and the 24-hour window is still open (an older message is past answering: no model call)."""
    state, trigger = found.state, found.state.last_inbound_sid
    window = state.window_open_until
    if any(now - at < OUTCOME_WAIT_S for sid, at in found.submitted.items()
           if sid == trigger or sid not in found.provisional):  # fmt: skip
        return False
    if len(found.undecided()) > AHEAD:
        return False
    return (
        trigger is not None and state.started and state.state == "bot" and not state.opted_out
        and trigger not in state.answered and trigger not in found.refused
        and window is not None and datetime.now(UTC) < window
    )  # fmt: skip


def _newest(found: AgentConversation) -> str:
    """The message a due turn answers (`_waiting` said there is one)."""
    trigger = found.state.last_inbound_sid
    assert trigger is not None
    return trigger


def pipelines(result: TurnResult) -> bool:
    """Whether the conversation's next turn may start before this one's outcome is decided: a
    plain reply, which the decider records as it is unless the conversation changed meanwhile
    (and then it discards the next turn too). A fallback, a hand-off or a close changes the
    conversation: the next turn waits for the decision."""
    return (
        result.reply is not None and result.fallback_reason is None
        and not any(c.accepted and c.name in (HANDOFF, CLOSE) for c in result.tool_calls)
    )  # fmt: skip


def turn_request(
    found: AgentConversation, settings: AgentSettings | None, llm: Model | None, faq: Model,
    default_model: str,
) -> tuple[Model, TurnRequest]:  # fmt: skip
    """Which model answers the conversation's next turn, and what it is given: the LLM when the
    platform has one (the settings' model, else the default), else the FAQ agent; the tenant's
    settings (or the defaults); the most recent messages that fit."""
    kind, chosen = effective(settings, llm is not None)
    model: Model = llm if kind == "llm" and llm is not None else faq
    name = (chosen.model or default_model) if model is llm else FAQ_MODEL
    return model, TurnRequest(found.tenant_id, chosen, name, bounded(found.history))


def _place(found: AgentConversation, said: Said, after_sid: str | None) -> None:
    """A bot's reply goes right after the message it answered (messages that came during the
    turn follow it), so the model reads the conversation as question, answer, next question."""
    history = found.history
    at = next((i for i, s in enumerate(history) if s.message_sid == after_sid), None)
    if after_sid is None or at is None or at == len(history) - 1:
        history.append(said)
        return
    rest = [history.pop() for _ in range(len(history) - at - 1)]
    history.append(said)
    history.extend(reversed(rest))


def bounded(history: Sequence[Said]) -> list[tuple[Role, str]]:
    """The most recent messages that fit in `HISTORY_CHARS`, oldest first."""
    kept: list[tuple[Role, str]] = []
    size = 0
    for said in reversed(history):
        role, text = said.role, said.text
        size += len(text)
        if kept and size > HISTORY_CHARS:
            break
        kept.append((role, text[:HISTORY_CHARS]))
    return kept[::-1]


async def run_agent(
    bootstrap_servers: str,
    stop: asyncio.Event,
    llm: Model | None,
    reader_url: str | None,
    options: AgentOptions = AgentOptions(),
    topic: str = EVENTS,
    grace_s: float = 8.0,
) -> None:
    """Run turns until `stop` is set; in-flight turns are given a moment to finish."""
    await stop_within(_serve(bootstrap_servers, stop, llm, reader_url, options, topic), stop,
                      grace_s, "agent")  # fmt: skip


async def _serve(
    bootstrap_servers: str,
    stop: asyncio.Event,
    llm: Model | None,
    reader_url: str | None,
    options: AgentOptions,
    topic: str,
) -> None:
    producer = kafka.producer(bootstrap_servers)
    consumer = kafka.groupless_consumer(bootstrap_servers, max_partition_fetch_bytes=1 << 20)
    reader = (
        await asyncpg.create_pool(reader_url, min_size=0, max_size=10, statement_cache_size=0)
        if reader_url else None
    )  # fmt: skip
    await producer.start()
    await consumer.start()
    runner = AgentRunner(producer, reader, llm, options)
    try:
        await follow(consumer, topic, stop, runner, _TICK_S)
        if runner.tasks:
            await asyncio.wait(runner.tasks, timeout=5.0)
    finally:
        for task in runner.tasks:
            task.cancel()
        await consumer.stop()
        await producer.stop()
        if reader is not None:
            await reader.close()
