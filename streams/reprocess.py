"""What-if reprocessing of agent turns (issue #7, item 5; ADR 0017).

`reprocess` reads one tenant's history from `zapflow.events` (group-less, from offset 0, the
tenant's partition only) and finds the turns the live agent took: every `AgentReplied` or
`AgentTurnDiscarded` whose triggering message was received in `[since, until)`. For each it
rebuilds what the live runner had at that turn with the runner's own fold
(`streams.agent.AgentConversation.remember`, the decider's `evolve` inside): the model's history
as the turn started (the trigger the newest customer message, the earlier replies in place) and
the conversation's state as the original outcome was decided. It runs the candidate settings
through the same model adapters (`turn_request`: the LLM, else the FAQ agent), at most
`concurrency` turns at once, and asks the decider's pure `decide` what it would have made of the
candidate's turn at that moment (a reply, a hand-off, a close, a discard). Each turn becomes one
`ShadowDecision` record in `zapflow.shadow.<run>`, after a `ShadowRun` record (the run's
settings and range) and before a `ShadowRunFinished` one.

Nothing else is produced: no command, no event (the one producer here refuses any topic that is
not a shadow topic). Shadow records are not event envelopes, so even a reader of events pointed
at a shadow topic by mistake (the sender, a projector) would fold nothing from them.

The candidate's FAQ is searched in PostgreSQL with the live search's own expressions (stemming in
the settings' language, rank, order, limit) over the candidate's entries passed as query
parameters: nothing is written, and the tenant's live FAQ is not consulted.

`load_report` reads a run back and pairs each candidate decision with the original turn from the
log (its `AgentReplied`, and the hand-off or close the decider derived from it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Final, Literal
from uuid import UUID, uuid4, uuid5

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from commands import conversation as conv
from commands.errors import Rejected
from events.catalog import EVENT_REGISTRY
from events.conversation import (
    CONVERSATION_EVENTS,
    AgentReplied,
    AgentTurnDiscarded,
    ConversationClosed,
    HandoffRequested,
    InboundMessageReceived,
    ToolCall,
)
from events.envelope import HEADER_KIND, HEADER_TYPE, EventEnvelope
from events.tenant import AgentSettings, TenantRegistered
from projections import agent_costs, status
from projections.agents import text_search_config
from streams import kafka
from streams.agent import (
    HISTORY_MESSAGES,
    AgentConversation,
    Said,
    turn_command,
    turn_request,
)
from streams.llm import FaqAgent, Knowledge, Model, TurnResult
from streams.log import Position, read_partition, start_from_zero
from streams.topics import EVENTS, SHADOW_CONFIGS, is_shadow, shadow_topic

log = logging.getLogger("zapflow.reprocess")

HEADER_RUN: Final = "zf-run"
_TOPIC_ALREADY_EXISTS: Final = 36
_FETCH_MS: Final = 1000
_IDLE_S: Final = 10.0
_TOPIC_WAIT_S: Final = 30.0
# The live FAQ search (projections.agents._SEARCH) over entries given as parameters instead of
# the faq_entries table: the same tsvector, query, rank, order and limit.
_CANDIDATE_SEARCH: Final = """
SELECT f.answer
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS f(question, answer, position),
     LATERAL CAST(setweight(to_tsvector($3::regconfig, f.question), 'A')
                  || setweight(to_tsvector($3::regconfig, f.answer), 'B') AS tsvector) AS search,
     LATERAL CAST(replace(plainto_tsquery($3::regconfig, $4)::text, ' & ', ' | ') AS tsquery) AS q
WHERE search @@ q
ORDER BY ts_rank(search, q) DESC, f.position LIMIT $5
"""


class RunExists(Exception):
    """A run of that name exists (refused without `force`): nothing was written."""


class NoSuchRun(Exception):
    """No shadow topic, or no run record in it."""


class UnknownTenant(Exception):
    """The tenant is not registered in the log."""


# -- the shadow records ------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ShadowRun(_Record):
    """What a run is: the candidate settings, the tenant and the range, how many turns."""

    record: Literal["run"] = "run"
    run: str
    run_id: UUID
    tenant_id: UUID
    since: AwareDatetime
    until: AwareDatetime
    started_at: AwareDatetime
    agent: Literal["llm", "faq"]
    model: str
    settings: AgentSettings
    settings_sha256: str
    turns: int = Field(ge=0)
    log_offsets: dict[int, int] = Field(
        description="The events partition read, and the offset it was read up to."
    )


class OriginalRef(_Record):
    """The original turn's outcome in `zapflow.events`."""

    outcome: Literal["replied", "discarded"]
    event_id: UUID
    tenant_seq: int
    partition: int
    offset: int
    decided_at: AwareDatetime


class CandidateTurn(_Record):
    """What the candidate did (the model adapter's own result: what `RecordAgentTurn` would
    have carried), and what the decider would have made of it then."""

    result: TurnResult
    cost_usd: Decimal | None = None
    verdict: Literal["replied", "discarded", "rejected", "failed"]
    handoff: str | None = Field(default=None, description="The hand-off's reason, if one.")
    closed: str | None = Field(default=None, description="The close's reason, if one.")
    detail: str = Field(default="", description="Why discarded, rejected or failed.")


class ShadowDecision(_Record):
    record: Literal["decision"] = "decision"
    run: str
    run_id: UUID
    tenant_id: UUID
    conversation_id: str
    trigger_message_sid: str
    trigger_received_at: AwareDatetime
    original: OriginalRef
    candidate: CandidateTurn
    history_messages: int = Field(ge=0, description="Messages the model was given.")


class ShadowRunFinished(_Record):
    record: Literal["finished"] = "finished"
    run: str
    run_id: UUID
    tenant_id: UUID
    finished_at: AwareDatetime
    turns: int
    failed: int


type ShadowRecord = Annotated[
    ShadowRun | ShadowDecision | ShadowRunFinished, Field(discriminator="record")
]
_SHADOW: Final[TypeAdapter[ShadowRun | ShadowDecision | ShadowRunFinished]] = TypeAdapter(
    ShadowRecord
)


# -- the tenant's history -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Turn:
    """One historical turn, with what the live runner and the decider had at that point."""

    conversation_id: str
    trigger_message_sid: str
    trigger_received_at: datetime
    original: OriginalRef
    issued_at: datetime
    """When the original `RecordAgentTurn` was issued (the outcome's `occurred_at`)."""
    state: conv.Conversation
    """The conversation as the decider had it just before the original outcome."""
    history: tuple[Said, ...]
    """What the runner had in the model's history when the turn started."""


@dataclass(slots=True)
class History:
    """Folds one tenant's events (in log order) into the turns taken in `[since, until)`."""

    tenant_id: UUID
    since: datetime
    until: datetime
    registered: bool = False
    turns: list[Turn] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)
    _last_seq: int = 0
    _conversations: dict[str, AgentConversation] = field(default_factory=dict)
    _received: dict[tuple[str, str], datetime] = field(default_factory=dict)

    def fold(self, position: Position, envelope: EventEnvelope) -> None:
        if envelope.tenant_id != self.tenant_id:
            return
        self.offsets[position.partition] = position.offset + 1
        if envelope.tenant_seq <= self._last_seq:
            return  # a duplicate in the log
        self._last_seq = envelope.tenant_seq
        event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
        if isinstance(event, TenantRegistered):
            self.registered = True
        if not isinstance(event, CONVERSATION_EVENTS):
            return
        cid = event.conversation_id
        found = self._conversations.get(cid)
        if found is None:
            # Twice the runner's length: messages that came during a turn are dropped from its
            # view below, and the older ones they pushed out must still be there.
            history: deque[Said] = deque(maxlen=2 * HISTORY_MESSAGES)
            found = self._conversations[cid] = AgentConversation(
                self.tenant_id, conv.Conversation(cid), history
            )
        if isinstance(event, InboundMessageReceived):
            self._received[(cid, event.message_sid)] = event.received_at
        if isinstance(event, AgentReplied | AgentTurnDiscarded):
            self._turn(found, envelope, position, event)
        found.remember(event)

    def _turn(
        self, found: AgentConversation, envelope: EventEnvelope, position: Position,
        event: AgentReplied | AgentTurnDiscarded,
    ) -> None:  # fmt: skip
        cid, trigger = event.conversation_id, event.trigger_message_sid
        received = self._received.get((cid, trigger))
        if received is None or not self.since <= received < self.until:
            return
        original = OriginalRef(
            outcome="replied" if isinstance(event, AgentReplied) else "discarded",
            event_id=envelope.event_id, tenant_seq=envelope.tenant_seq,
            partition=position.partition, offset=position.offset,
            decided_at=envelope.recorded_at,
        )  # fmt: skip
        self.turns.append(Turn(cid, trigger, received, original, envelope.occurred_at,
                               found.state, at_turn_start(found.history, trigger)))  # fmt: skip


def at_turn_start(history: Iterable[Said], trigger: str) -> tuple[Said, ...]:
    """The runner's history when the turn for `trigger` started: the trigger was then the newest
    customer message, so customer messages after it (and what followed them) came during the
    turn; the runner's last `HISTORY_MESSAGES` entries."""
    entries = list(history)
    at = next((i for i in reversed(range(len(entries))) if entries[i].message_sid == trigger),
              None)  # fmt: skip
    if at is None:
        return tuple(entries[-HISTORY_MESSAGES:])
    kept = entries[: at + 1]
    for said in entries[at + 1 :]:
        if said.role == "user":
            break
        kept.append(said)
    return tuple(kept[-HISTORY_MESSAGES:])


def tenant_partition(tenant_id: UUID, partitions: Sequence[int]) -> int:
    """The partition a tenant's records go to (the producers' key hash, ADR 0002)."""
    partition: int = DefaultPartitioner()(str(tenant_id).encode(), sorted(partitions), [])
    return partition


async def tenant_events(
    consumer: AIOKafkaConsumer, tenant_id: UUID, topic: str = EVENTS
) -> AsyncIterator[tuple[Position, EventEnvelope]]:
    """The tenant's events in log order, from offset 0 to the end of its partition as first
    seen (group-less: `consumer` is started, never joins a group, never commits)."""
    partitions = await status.topic_partitions(consumer, topic)
    if not partitions:
        raise RuntimeError(f"topic {topic} does not exist; run `zapflow setup`")
    partition = tenant_partition(tenant_id, partitions)
    async for position, envelope in read_partition(consumer, topic, partition):
        if envelope.tenant_id == tenant_id:
            yield position, envelope


async def read_history(
    brokers: str, tenant_id: UUID, since: datetime, until: datetime, topic: str = EVENTS
) -> History:
    history = History(tenant_id, since, until)
    consumer = kafka.groupless_consumer(brokers, max_partition_fetch_bytes=1 << 20)
    await consumer.start()
    try:
        async for position, envelope in tenant_events(consumer, tenant_id, topic):
            history.fold(position, envelope)
    finally:
        await consumer.stop()
    return history


# -- the candidate's turns ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """What answers in the what-if: the candidate settings and the platform's models."""

    settings: AgentSettings
    llm: Model | None
    default_model: str
    faq: Model = field(default_factory=FaqAgent)


def settings_sha256(settings: AgentSettings) -> str:
    dumped = orjson.dumps(settings.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(dumped).hexdigest()


class CandidateFaq:
    """The candidate's FAQ, searched as the live FAQ is (see the module's docstring)."""

    def __init__(self, settings: AgentSettings, pool: asyncpg.Pool | None) -> None:
        self.questions = [_clean(entry.question) for entry in settings.faq]
        self.answers = [_clean(entry.answer) for entry in settings.faq]
        self.language = text_search_config(settings.reply_language)
        self.pool = pool

    async def search(self, query: str, limit: int = 3) -> list[str]:
        if not self.answers:
            return []
        if self.pool is None:
            raise RuntimeError("the candidate has a FAQ but no database to search it with")
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(_CANDIDATE_SEARCH, self.questions, self.answers,
                                    self.language, _clean(query), limit)  # fmt: skip
        return [row["answer"] for row in rows]


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd")  # as the live FAQ: PostgreSQL text refuses NUL


async def decide_turn(
    turn: Turn, tenant_id: UUID, candidate: Candidate, knowledge: Knowledge, run_id: UUID
) -> CandidateTurn:
    """Run the candidate on one turn's context, and judge the result as the decider would have
    when the original outcome was decided. A turn that raises is `failed`, with the error."""
    found = AgentConversation(tenant_id, turn.state, deque(turn.history))
    model, request = turn_request(found, candidate.settings, candidate.llm, candidate.faq,
                                  candidate.default_model)  # fmt: skip
    agent: Literal["llm", "faq"] = "llm" if model is candidate.llm else "faq"
    started = time.monotonic()
    try:
        result = await model.turn(request, knowledge)
    except Exception as exc:  # one failed turn is recorded, and the run goes on
        log.exception("candidate turn failed", extra={"tenant_id": str(tenant_id)})
        failed = TurnResult(agent, request.model, "")
        return CandidateTurn(result=failed, verdict="failed",
                             detail=f"{type(exc).__name__}: {exc}"[:500])  # fmt: skip
    result.latency_ms = result.latency_ms or int((time.monotonic() - started) * 1000)
    verdict, handoff, closed, detail = _verdict(turn, result, run_id)
    cost = agent_costs.estimate(result.model, result.tokens_in, result.tokens_out)
    return CandidateTurn(result=result, cost_usd=cost, verdict=verdict, handoff=handoff,
                         closed=closed, detail=detail)  # fmt: skip


def _verdict(
    turn: Turn, result: TurnResult, run_id: UUID
) -> tuple[Literal["replied", "discarded", "rejected"], str | None, str | None, str]:
    """The decider's own `decide` on the candidate's `RecordAgentTurn`, with the state and the
    time of the original decision: replied (and handed off or closed), or discarded."""
    cid, trigger = turn.conversation_id, turn.trigger_message_sid
    command_id = uuid5(run_id, f"turn:{cid}:{trigger}")
    try:
        command = turn_command(cid, trigger, command_id, result)
        ctx = conv.Context(command_id, turn.issued_at, turn.original.decided_at)
        events = conv.decide(turn.state, command, ctx)
    except ValidationError as exc:
        return "rejected", None, None, f"invalid turn: {exc.errors()[0]['msg']}"
    except Rejected as refused:
        return "rejected", None, None, f"{refused.code}: {refused.reason}"
    handoff = next((e.reason for e in events if isinstance(e, HandoffRequested)), None)
    closed = next((e.reason for e in events if isinstance(e, ConversationClosed)), None)
    discarded = next((e for e in events if isinstance(e, AgentTurnDiscarded)), None)
    if discarded is not None:
        detail = discarded.reason + (f": {discarded.detail}" if discarded.detail else "")
        return "discarded", None, None, detail
    return "replied", handoff, closed, ""


async def run_turns(
    turns: Sequence[Turn], tenant_id: UUID, candidate: Candidate, knowledge: Knowledge,
    run_id: UUID, concurrency: int,
    emit: Callable[[Turn, CandidateTurn], Awaitable[None]],
) -> None:  # fmt: skip
    """Decide every turn, at most `concurrency` at once; `emit` each as it is done."""
    pending: Iterator[Turn] = iter(turns)

    async def work() -> None:
        for turn in pending:  # shared: each worker takes the next turn left
            await emit(turn, await decide_turn(turn, tenant_id, candidate, knowledge, run_id))

    await asyncio.gather(*(work() for _ in range(max(1, min(concurrency, len(turns))))))


# -- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhatIf:
    """A run as asked for (validated by the caller: `shadow_topic(run)`, since < until)."""

    run: str
    tenant_id: UUID
    since: datetime
    until: datetime
    concurrency: int = 8
    force: bool = False


@dataclass(frozen=True, slots=True)
class Topology:
    """Where the run reads and writes, and the shape of the topic it creates."""

    brokers: str
    partitions: int = 12
    replication: int = 1
    events: str = EVENTS
    faq_database_url: str | None = None


@dataclass(frozen=True, slots=True)
class RunSummary:
    run: str
    topic: str
    run_id: UUID
    tenant_id: UUID
    turns: int
    failed: int
    conversations: int
    agent: str
    model: str
    seconds: float

    def as_json(self) -> dict[str, object]:
        return {
            "run": self.run, "topic": self.topic, "run_id": str(self.run_id),
            "tenant_id": str(self.tenant_id), "turns": self.turns, "failed": self.failed,
            "conversations": self.conversations, "agent": self.agent, "model": self.model,
            "seconds": round(self.seconds, 3),
        }  # fmt: skip


class ShadowWriter:
    """The run's only producer: it writes to the run's shadow topic and nowhere else."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, tenant_id: UUID) -> None:
        if not is_shadow(topic):
            raise ValueError(f"{topic} is not a shadow topic")
        self.producer, self.topic, self.key = producer, topic, str(tenant_id).encode()

    async def write(self, record: ShadowRun | ShadowDecision | ShadowRunFinished) -> None:
        headers = [(HEADER_KIND, b"shadow"), (HEADER_TYPE, type(record).__name__.encode()),
                   (HEADER_RUN, record.run.encode())]  # fmt: skip
        value = record.model_dump_json().encode()
        await self.producer.send_and_wait(self.topic, value, key=self.key, headers=headers)


async def reprocess(
    topology: Topology, whatif: WhatIf, candidate: Candidate,
    progress: Callable[[int, int], None] | None = None,
) -> RunSummary:  # fmt: skip
    """The what-if run (see the module's docstring). Refusals (`RunExists`, `UnknownTenant`)
    come before anything is written."""
    started, topic = time.monotonic(), shadow_topic(whatif.run)
    admin = kafka.admin(topology.brokers)
    await admin.start()
    try:
        exists = topic in set(await admin.list_topics())
        if exists and not whatif.force:
            raise RunExists(f"run {whatif.run!r} exists ({topic}); --force replaces it")
        history = await read_history(topology.brokers, whatif.tenant_id, whatif.since,
                                     whatif.until, topology.events)  # fmt: skip
        if not history.registered:
            raise UnknownTenant(f"tenant {whatif.tenant_id} is not registered in the log")
        if exists:
            await _delete_topic(admin, topic)
        await _create_topic(admin, topic, topology)
    finally:
        await admin.close()
    return await _run(topology, whatif, candidate, topic, history, started, progress)


async def _run(
    topology: Topology, whatif: WhatIf, candidate: Candidate, topic: str, history: History,
    started: float, progress: Callable[[int, int], None] | None,
) -> RunSummary:  # fmt: skip
    run_id, turns = uuid4(), history.turns
    probe = AgentConversation(whatif.tenant_id, conv.Conversation(""))
    model, request = turn_request(probe, candidate.settings, candidate.llm, candidate.faq,
                                  candidate.default_model)  # fmt: skip
    header = ShadowRun(
        run=whatif.run, run_id=run_id, tenant_id=whatif.tenant_id, since=whatif.since,
        until=whatif.until, started_at=datetime.now(UTC),
        agent="llm" if model is candidate.llm else "faq", model=request.model,
        settings=candidate.settings, settings_sha256=settings_sha256(candidate.settings),
        turns=len(turns), log_offsets=history.offsets,
    )  # fmt: skip
    pool = None
    if candidate.settings.faq and topology.faq_database_url is not None:
        pool = await asyncpg.create_pool(topology.faq_database_url, min_size=0,
                                         max_size=max(1, min(whatif.concurrency, 4)),
                                         statement_cache_size=0)  # fmt: skip
    faq = CandidateFaq(candidate.settings, pool)
    producer = kafka.producer(topology.brokers)
    await producer.start()
    done = failed = 0
    try:
        writer = ShadowWriter(producer, topic, whatif.tenant_id)
        await writer.write(header)

        async def emit(turn: Turn, decided: CandidateTurn) -> None:
            nonlocal done, failed
            await writer.write(ShadowDecision(
                run=whatif.run, run_id=run_id, tenant_id=whatif.tenant_id,
                conversation_id=turn.conversation_id,
                trigger_message_sid=turn.trigger_message_sid,
                trigger_received_at=turn.trigger_received_at, original=turn.original,
                candidate=decided, history_messages=len(turn.history),
            ))  # fmt: skip
            done += 1
            failed += decided.verdict == "failed"
            if progress is not None:
                progress(done, len(turns))

        await run_turns(turns, whatif.tenant_id, candidate, faq.search, run_id,
                        whatif.concurrency, emit)  # fmt: skip
        await writer.write(ShadowRunFinished(run=whatif.run, run_id=run_id,
                                             tenant_id=whatif.tenant_id,
                                             finished_at=datetime.now(UTC), turns=done,
                                             failed=failed))  # fmt: skip
    finally:
        await producer.stop()
        if pool is not None:
            await pool.close()
    return RunSummary(
        whatif.run, topic, run_id, whatif.tenant_id, done, failed,
        len({t.conversation_id for t in turns}), header.agent, header.model,
        time.monotonic() - started,
    )  # fmt: skip


async def _delete_topic(admin: AIOKafkaAdminClient, topic: str) -> None:
    await admin.delete_topics([topic])
    deadline = time.monotonic() + _TOPIC_WAIT_S
    while topic in set(await admin.list_topics()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{topic} was not deleted within {_TOPIC_WAIT_S:.0f} s")
        await asyncio.sleep(0.2)


async def _create_topic(admin: AIOKafkaAdminClient, topic: str, topology: Topology) -> None:
    """Create the run's topic; another run creating it at the same moment is `RunExists`. A
    broker still finishing a deletion (Kafka, Redpanda) is given a moment."""
    spec = NewTopic(topic, topology.partitions, topology.replication, topic_configs=SHADOW_CONFIGS)
    deadline = time.monotonic() + _TOPIC_WAIT_S
    while True:
        response = await admin.create_topics([spec])
        ((_, code, message),) = response.topic_errors
        if code == 0:
            return
        if code == _TOPIC_ALREADY_EXISTS and topic in set(await admin.list_topics()):
            raise RunExists(f"{topic} was created by someone else meanwhile")
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot create {topic}: error {code} {message}")
        await asyncio.sleep(0.5)


# -- reading a run back -------------------------------------------------------------------------


@dataclass(slots=True)
class ShadowRunRecords:
    run: ShadowRun
    decisions: list[ShadowDecision]
    finished: ShadowRunFinished | None


async def read_run(brokers: str, run: str) -> ShadowRunRecords:
    """The latest run in `zapflow.shadow.<run>` (a run replaced with --force lives in a new
    topic; the run id keeps a stray older record out all the same)."""
    topic = shadow_topic(run)
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    records: list[ShadowRun | ShadowDecision | ShadowRunFinished] = []
    try:
        if not await status.topic_partitions(consumer, topic):
            raise NoSuchRun(f"no run {run!r} ({topic} does not exist)")
        async for value in _values(consumer, topic):
            records.append(_SHADOW.validate_json(value))
    finally:
        await consumer.stop()
    headers = [r for r in records if isinstance(r, ShadowRun)]
    if not headers:
        raise NoSuchRun(f"{topic} holds no run record")
    header = max(headers, key=lambda r: r.started_at)
    decisions = [r for r in records if isinstance(r, ShadowDecision) and r.run_id == header.run_id]
    finished = next((r for r in records if isinstance(r, ShadowRunFinished)
                     and r.run_id == header.run_id), None)  # fmt: skip
    return ShadowRunRecords(header, decisions, finished)


async def _values(consumer: AIOKafkaConsumer, topic: str) -> AsyncIterator[bytes]:
    """Every record value of `topic` from offset 0 to each partition's end as first seen."""
    ends: dict[TopicPartition, int] = await start_from_zero(consumer, topic)
    idle_since = time.monotonic()
    while ends:
        batch = await consumer.getmany(*ends, timeout_ms=_FETCH_MS)
        for tp, found in batch.items():
            idle_since = time.monotonic()
            for record in found:
                if record.offset < ends.get(tp, 0) and record.value is not None:
                    yield record.value
        for tp in list(ends):
            if await consumer.position(tp) >= ends[tp]:
                del ends[tp]
        if ends and time.monotonic() - idle_since > _IDLE_S:
            raise TimeoutError(f"{topic}: no records within {_IDLE_S:.0f} s; {len(ends)} left")


@dataclass(slots=True)
class Original:
    """An original turn as the log has it."""

    outcome: Literal["replied", "discarded"]
    agent: str = ""
    model: str = ""
    reply: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tokens_in: int = 0
    tokens_out: int = 0
    handoff: str | None = None
    closed: str | None = None
    detail: str = ""
    cause: UUID | None = None

    @property
    def cost_usd(self) -> Decimal | None:
        if self.outcome != "replied":
            return None
        return agent_costs.estimate(self.model, self.tokens_in, self.tokens_out)


@dataclass(slots=True)
class Originals:
    """The original turns (by outcome event id) and the customers' messages (by SID)."""

    tenant_id: UUID
    wanted: set[UUID]
    turns: dict[UUID, Original] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    _by_cause: dict[UUID, Original] = field(default_factory=dict)

    def fold(self, envelope: EventEnvelope) -> None:
        kind = envelope.type
        if kind not in _ORIGINAL_TYPES:
            return
        event = EVENT_REGISTRY.decode(kind, envelope.schema_version, envelope.payload)
        match event:
            case InboundMessageReceived():
                self.messages[event.message_sid] = event.body
            case AgentReplied() if envelope.event_id in self.wanted:
                turn = Original("replied", event.agent, event.model, event.reply,
                                event.tool_calls, event.tokens_in, event.tokens_out,
                                cause=envelope.causation_id)  # fmt: skip
                self.turns[envelope.event_id] = self._by_cause[envelope.causation_id] = turn
            case AgentTurnDiscarded() if envelope.event_id in self.wanted:
                detail = event.reason + (f": {event.detail}" if event.detail else "")
                self.turns[envelope.event_id] = Original("discarded", detail=detail)
            case HandoffRequested() if event.requested_by == "bot":
                if (caused := self._by_cause.get(envelope.causation_id)) is not None:
                    caused.handoff = event.reason
            case ConversationClosed() if event.closed_by == "bot":
                if (caused := self._by_cause.get(envelope.causation_id)) is not None:
                    caused.closed = event.reason
            case _:
                pass


_ORIGINAL_TYPES: Final = frozenset({"InboundMessageReceived", "AgentReplied",
                                    "AgentTurnDiscarded", "HandoffRequested",
                                    "ConversationClosed"})  # fmt: skip


async def read_originals(
    brokers: str, tenant_id: UUID, wanted: set[UUID], topic: str = EVENTS
) -> Originals:
    originals = Originals(tenant_id, wanted)
    if not wanted:
        return originals
    consumer = kafka.groupless_consumer(brokers, max_partition_fetch_bytes=1 << 20)
    await consumer.start()
    try:
        async for _, envelope in tenant_events(consumer, tenant_id, topic):
            originals.fold(envelope)
    finally:
        await consumer.stop()
    return originals
