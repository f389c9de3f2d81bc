"""What-if reprocessing without a broker (ADR 0017): which turns a run takes and what each is
given, the candidate judged by the decider's own rules, bounded concurrency, the checks on every
option before anything is touched, and the report's table and HTML."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from commands import conversation as conv
from commands.agent import RecordAgentTurn
from commands.inbound import ReceiveInboundMessage
from commands.operator import HandOffToHuman
from events.chain import GENESIS, head_of, seal
from events.conversation import ConversationEvent, ToolCall
from events.envelope import EventDraft, EventEnvelope
from events.tenant import AgentSettings, FaqEntry
from streams.agent import HISTORY_MESSAGES, Said
from streams.llm import Knowledge, TurnRequest, TurnResult
from streams.log import Position, decoded
from streams.reprocess import (
    Candidate,
    CandidateTurn,
    History,
    Original,
    OriginalRef,
    ShadowDecision,
    ShadowRun,
    ShadowRunFinished,
    ShadowRunRecords,
    Turn,
    at_turn_start,
    run_turns,
    settings_sha256,
)
from streams.topics import is_shadow, shadow_topic
from tests.builders import tenant_registered
from zapflow.cli import main
from zapflow.reprocess import compare, terminal, to_html

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
HASH = "ab" * 32


class Log:
    """A tenant's log as the decider writes it: commands decided with the real `decide`."""

    def __init__(self, tenant: uuid.UUID) -> None:
        self.tenant, self.head = tenant, GENESIS
        self.envelopes: list[EventEnvelope] = []
        self.states: dict[str, conv.Conversation] = {}
        self._append(seal(tenant_registered(tenant), self.head))

    def _append(self, envelope: EventEnvelope) -> None:
        self.head = head_of(envelope)
        self.envelopes.append(envelope)

    def decide(self, cid: str, command: object, at: datetime) -> list[ConversationEvent]:
        command_id = uuid.uuid4()
        state = self.states.get(cid, conv.Conversation(cid))
        events = conv.decide(state, command, conv.Context(command_id, at, at))  # type: ignore[arg-type]
        for event in events:
            state = conv.evolve(state, event)
            self._append(seal(EventDraft(
                event_id=uuid.uuid4(), type=event.type, schema_version=event.schema_version,
                tenant_id=self.tenant, stream=f"conversation:{cid}", occurred_at=at,
                recorded_at=at, correlation_id=command_id, causation_id=command_id,
                payload=event.payload(),
            ), self.head))  # fmt: skip
        self.states[cid] = state
        return events

    def inbound(self, who: str, sid: str, body: str, at: datetime) -> str:
        cid = conv.conversation_id(self.tenant, who)
        self.decide(cid, ReceiveInboundMessage(message_sid=sid, account_sid="AC" + "0" * 32,
                                               contact=who, sender="whatsapp:+14155238886",
                                               body=body), at)  # fmt: skip
        return cid

    def answer(self, cid: str, sid: str, reply: str | None, at: datetime,
               tools: Sequence[ToolCall] = ()) -> None:  # fmt: skip
        self.decide(cid, RecordAgentTurn(
            conversation_id=cid, turn_id=f"turn-{sid}", trigger_message_sid=sid, agent="llm",
            model="gpt-4o-mini", prompt_hash=HASH, reply=reply, tool_calls=list(tools),
            tokens_in=100, tokens_out=10, latency_ms=5,
        ), at)  # fmt: skip


def fold(log: Log, since: datetime, until: datetime, tenant: uuid.UUID | None = None) -> History:
    history = History(tenant or log.tenant, since, until)
    for offset, envelope in enumerate(log.envelopes):
        history.fold(Position(3, offset), envelope)
    return history


def test_run_names_are_one_topic_each() -> None:
    assert shadow_topic("prompt-v2_b") == "zapflow.shadow.prompt-v2_b"
    assert is_shadow(shadow_topic("x"))
    for bad in ("", "-x", "Prompt", "a.b", "a b", "x" * 64, "../events", "é"):
        with pytest.raises(ValueError, match="1 to 63 characters"):
            shadow_topic(bad)


def test_the_turns_taken_are_those_whose_message_came_in_the_range() -> None:
    """Outcomes (replied or discarded) of messages received in [since, until): not the ones
    before or after, not another tenant's, not a message that had no turn of its own."""
    log = Log(uuid.uuid4())
    early = log.inbound("whatsapp:+5511900000001", "SM-early", "antes", T0 - timedelta(hours=1))
    log.answer(early, "SM-early", "r0", T0 - timedelta(minutes=59))
    cid = log.inbound("whatsapp:+5511900000002", "SM-1", "Oi", T0)
    log.answer(cid, "SM-1", "Olá!", T0 + timedelta(seconds=2))
    # a burst: the first message has no turn of its own, the second's answers both
    log.inbound("whatsapp:+5511900000002", "SM-2", "quero marcar", T0 + timedelta(minutes=1))
    log.inbound("whatsapp:+5511900000002", "SM-3", "uma consulta", T0 + timedelta(minutes=1))
    log.decide(
        cid,
        HandOffToHuman(conversation_id=cid, operator="ana", reason="vip"),
        T0 + timedelta(minutes=1),
    )
    log.answer(cid, "SM-3", "Claro!", T0 + timedelta(minutes=2))  # discarded: not_bot
    late = log.inbound("whatsapp:+5511900000003", "SM-late", "depois", T0 + timedelta(hours=1))
    log.answer(late, "SM-late", "r9", T0 + timedelta(hours=1, seconds=1))

    history = fold(log, T0, T0 + timedelta(hours=1))
    assert history.registered
    assert [(t.trigger_message_sid, t.original.outcome) for t in history.turns] == [
        ("SM-1", "replied"), ("SM-3", "discarded")]  # fmt: skip
    first, second = history.turns
    assert first.original.partition == 3
    assert log.envelopes[first.original.offset].type == "AgentReplied"
    assert log.envelopes[second.original.offset].type == "AgentTurnDiscarded"
    assert second.state.state == "human"  # as the decider had it when it discarded the turn
    assert history.offsets == {3: len(log.envelopes)}
    other = fold(log, T0, T0 + timedelta(hours=1), tenant=uuid.uuid4())
    assert (other.registered, other.turns) == (False, [])


def test_a_turn_is_given_the_history_the_runner_had_when_it_started() -> None:
    """The earlier reply sits after the message it answered; a message that came during the
    turn (after its trigger) is not in it; the next turn sees both."""
    log = Log(uuid.uuid4())
    who = "whatsapp:+5511900000004"
    cid = log.inbound(who, "SM-1", "primeira", T0)
    log.inbound(who, "SM-2", "segunda (durante o turno)", T0 + timedelta(seconds=1))
    log.answer(cid, "SM-1", "resposta 1", T0 + timedelta(seconds=2))
    log.answer(cid, "SM-2", "resposta 2", T0 + timedelta(seconds=4))
    first, second = fold(log, T0, T0 + timedelta(hours=1)).turns
    assert [(s.role, s.text) for s in first.history] == [("user", "primeira")]
    assert [(s.role, s.text) for s in second.history] == [
        ("user", "primeira"), ("assistant", "resposta 1"),
        ("user", "segunda (durante o turno)")]  # fmt: skip


def test_the_view_at_turn_start_keeps_the_runner_length() -> None:
    said = [Said("user", f"m{n}", f"SM{n}") for n in range(30)]
    view = at_turn_start([*said, Said("assistant", "op"), Said("user", "later", "SM99")], "SM29")
    assert len(view) == HISTORY_MESSAGES
    assert (view[-1].text, view[0].text) == ("op", "m11")


class Scripted:
    """A model whose turns are given per customer message; counts the turns in flight."""

    def __init__(self, results: dict[str, TurnResult], delay_s: float = 0.0) -> None:
        self.results, self.delay_s = results, delay_s
        self.in_flight = self.most = 0
        self.requests: list[TurnRequest] = []

    async def turn(self, request: TurnRequest, knowledge: Knowledge) -> TurnResult:
        self.requests.append(request)
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            last = request.history[-1][1]
            if last == "boom":
                raise RuntimeError("the model broke")
            return self.results[last]
        finally:
            self.in_flight -= 1


def _handoff() -> TurnResult:
    call = ToolCall(name="handoff_to_human", arguments={"reason": "pediu"}, accepted=True,
                    result="ok")  # fmt: skip
    return TurnResult("llm", "gpt-4o-mini", HASH, tool_calls=[call], tokens_in=50, tokens_out=5)


async def test_candidates_are_judged_by_the_decider_at_most_n_at_once() -> None:
    log = Log(uuid.uuid4())
    sids = []
    for n in range(8):
        sid = f"SM-{n}"
        cid = log.inbound(f"whatsapp:+55119000001{n:02d}", sid, ["ajuda", "boom"][n == 7] if n >= 6
                          else f"pergunta {n}", T0 + timedelta(minutes=n))  # fmt: skip
        if n == 6:
            log.decide(
                cid,
                HandOffToHuman(conversation_id=cid, operator="ana", reason="x"),
                T0 + timedelta(minutes=n),
            )
        log.answer(cid, sid, "original", T0 + timedelta(minutes=n, seconds=1))
        sids.append(sid)
    turns = fold(log, T0, T0 + timedelta(hours=1)).turns
    results = {
        f"pergunta {n}": TurnResult("llm", "gpt-4o-mini", HASH, reply=f"nova {n}",
                                    tokens_in=100, tokens_out=20)
        for n in range(6)
    }  # fmt: skip
    results["pergunta 0"] = _handoff()
    results["ajuda"] = TurnResult("llm", "gpt-4o-mini", HASH, reply="vou ajudar")
    model = Scripted(results, delay_s=0.05)
    candidate = Candidate(AgentSettings(system_prompt="novo"), model, "gpt-4o-mini")
    decided: dict[str, CandidateTurn] = {}

    async def emit(turn: Turn, result: CandidateTurn) -> None:
        decided[turn.trigger_message_sid] = result

    async def nothing(query: str) -> list[str]:
        return []

    await run_turns(turns, log.tenant, candidate, nothing, uuid.uuid4(), 3, emit)
    assert set(decided) == set(sids)
    assert model.most == 3
    assert (decided["SM-0"].verdict, decided["SM-0"].handoff, decided["SM-0"].result.reply) == (
        "replied", "pediu", None)  # fmt: skip
    assert (decided["SM-1"].verdict, decided["SM-1"].result.reply) == ("replied", "nova 1")
    assert decided["SM-1"].cost_usd == Decimal("0.000027")  # (100 * 0.15 + 20 * 0.60) / 1M
    # The conversation was a human's when the original was decided: the candidate's is too.
    assert (decided["SM-6"].verdict, decided["SM-6"].detail) == (
        "discarded", "not_bot: the conversation is human")  # fmt: skip
    assert decided["SM-7"].verdict == "failed"
    assert "the model broke" in decided["SM-7"].detail
    assert all(r.settings.system_prompt == "novo" for r in model.requests)


async def test_without_an_llm_the_candidate_faq_answers() -> None:
    log = Log(uuid.uuid4())
    cid = log.inbound("whatsapp:+5511900000201", "SM-1", "horário?", T0)
    log.answer(cid, "SM-1", "original", T0 + timedelta(seconds=1))
    settings = AgentSettings(system_prompt="x", faq=[FaqEntry(question="horário", answer="8h")])
    decided: list[CandidateTurn] = []
    asked: list[str] = []

    async def knowledge(query: str) -> list[str]:
        asked.append(query)
        return ["8h"]

    async def emit(turn: Turn, result: CandidateTurn) -> None:
        decided.append(result)

    turns = fold(log, T0, T0 + timedelta(hours=1)).turns
    await run_turns(turns, log.tenant, Candidate(settings, None, "gpt-4o-mini"), knowledge,
                    uuid.uuid4(), 8, emit)  # fmt: skip
    (result,) = decided
    turn = result.result
    assert (turn.agent, turn.model, turn.reply, result.verdict) == ("faq", "faq", "8h", "replied")
    assert result.cost_usd is None
    assert asked == ["horário?"]


def test_shadow_records_are_not_events() -> None:
    """A reader of events pointed at a shadow topic by mistake (the sender) folds nothing."""
    record = ShadowRunFinished(run="x", run_id=uuid.uuid4(), tenant_id=uuid.uuid4(),
                               finished_at=T0, turns=1, failed=0)  # fmt: skip
    assert decoded(record.model_dump_json().encode()) is None
    assert decoded(_decision("c1", "SM-1", "r", T0).model_dump_json().encode()) is None


# -- the options, checked before anything is touched ----------------------------------------------


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """`main` configures logging for a process of its own."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _argv(tmp_path: Path, **overrides: str) -> list[str]:
    config = tmp_path / "agent.json"
    if not config.exists():
        config.write_text('{"system_prompt": "novo"}')
    options = {"--tenant": str(uuid.uuid4()), "--since": "2026-11-01", "--until": "2026-11-02",
               "--config": str(config), "--run": "prompt-v2"} | overrides  # fmt: skip
    return ["reprocess", "agent", *[part for pair in options.items() for part in pair]]


@pytest.mark.parametrize(
    ("overrides", "files", "named"),
    [
        ({"--run": "Prompt.V2"}, {}, "--run='Prompt.V2': must be 1 to 63 characters"),
        ({"--since": "yesterday"}, {}, "--since='yesterday': not an ISO 8601"),
        ({"--until": "2026-13-01"}, {}, "--until='2026-13-01': not an ISO 8601"),
        ({"--since": "2026-11-03"}, {}, "--since=2026-11-03: must be before --until"),
        ({"--since": "2026-11-02T00:00:00Z"}, {}, "must be before --until"),
        ({"--config": "missing.json"}, {}, "--config=missing.json: cannot read"),
        ({"--config": "bad.json"}, {"bad.json": '{"system_prompt": "x", "temperature": 3}'},
         "--config=.*bad.json: temperature: Input should be less"),
        ({"--config": "bad.yaml"}, {"bad.yaml": "system_prompt: x\nsurprise: 1\n"},
         "--config=.*bad.yaml: surprise: Extra inputs are not permitted"),
        ({"--config": "bad.yml"}, {"bad.yml": "model: gpt-4o\n"},
         "bad.yml: system_prompt: Field required"),
        ({"--config": "broken.yaml"}, {"broken.yaml": "a: [1\n"}, "broken.yaml: is not YAML"),
        ({"--config": "not.json"}, {"not.json": "{"}, "not.json: is not JSON"),
        ({"--concurrency": "0"}, {}, "--concurrency=0: must be 1 to 256"),
    ],
)  # fmt: skip
def test_bad_options_are_named_before_anything_is_touched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    overrides: dict[str, str], files: dict[str, str], named: str,
) -> None:  # fmt: skip
    """No broker and no database answer here: a check that came after connecting would fail
    with their error instead of naming the option."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    monkeypatch.setenv("ZAPFLOW_STATE_DIR", str(tmp_path / "state"))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    if "--config" in overrides and overrides["--config"] in files:
        overrides = overrides | {"--config": str(tmp_path / overrides["--config"])}
    assert main(_argv(tmp_path, **overrides)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("zapflow: error: ")
    assert re.search(named, err), err


def test_a_bad_tenant_id_or_run_name_for_the_report_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:  # fmt: skip
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none")
    with pytest.raises(SystemExit) as exited:
        main(_argv(tmp_path, **{"--tenant": "acme"}))
    assert exited.value.code == 2
    assert "not a tenant id: 'acme'" in capsys.readouterr().err
    assert main(["reprocess", "report", "../x"]) == 2
    assert "NAME='../x': must be 1 to 63" in capsys.readouterr().err


def test_yaml_settings_are_read_like_json(tmp_path: Path) -> None:
    from zapflow.reprocess import candidate_settings

    path = tmp_path / "agent.yaml"
    path.write_text("system_prompt: |\n  Você é a assistente.\nenabled_tools: [search_knowledge]\n"
                    "faq:\n  - question: Horário?\n    answer: Das 8h às 18h.\n")  # fmt: skip
    settings = candidate_settings(str(path))
    assert settings.system_prompt == "Você é a assistente.\n"
    assert settings.enabled_tools == ["search_knowledge"]
    assert settings.faq == [FaqEntry(question="Horário?", answer="Das 8h às 18h.")]


# -- the report ---------------------------------------------------------------------------------


def _decision(cid: str, sid: str, reply: str | None, at: datetime, *, offset: int = 0,
              handoff: str | None = None, tokens: tuple[int, int] = (100, 10),
              verdict: str = "replied") -> ShadowDecision:  # fmt: skip
    tools = [ToolCall(name="handoff_to_human", arguments={"reason": handoff}, accepted=True)
             ] if handoff else []  # fmt: skip
    return ShadowDecision(
        run="v2", run_id=RUN_ID, tenant_id=TENANT, conversation_id=cid, trigger_message_sid=sid,
        trigger_received_at=at,
        original=OriginalRef(outcome="replied", event_id=uuid.uuid5(RUN_ID, sid), tenant_seq=1,
                             partition=0, offset=offset, decided_at=at),
        candidate=CandidateTurn(result=TurnResult("llm", "gpt-4o-mini", HASH, reply=reply,
                                                  tool_calls=tools, tokens_in=tokens[0],
                                                  tokens_out=tokens[1]),
                                verdict=verdict, handoff=handoff,  # type: ignore[arg-type]
                                cost_usd=Decimal(tokens[0]) * Decimal("0.15") / 1_000_000
                                + Decimal(tokens[1]) * Decimal("0.60") / 1_000_000),
        history_messages=1,
    )  # fmt: skip


RUN_ID = uuid.UUID(int=7)
TENANT = uuid.UUID(int=9)


def _records(finished: bool = True) -> ShadowRunRecords:
    decisions = [
        _decision("conv-a", "SM-1", None, T0, offset=10, handoff="pediu <uma> pessoa"),
        _decision("conv-a", "SM-2", "<script>alert('x')</script>", T0, offset=20),
        _decision("conv-b", "SM-3", "Das 8h às 18h.", T0, offset=30, tokens=(80, 8)),
    ]
    run = ShadowRun(
        run="v2", run_id=RUN_ID, tenant_id=TENANT, since=T0, until=T0 + timedelta(days=1),
        started_at=T0, agent="llm", model="gpt-4o-mini",
        settings=AgentSettings(system_prompt="Seja </style> breve"),
        settings_sha256=settings_sha256(AgentSettings(system_prompt="x")), turns=3,
        log_offsets={0: 40},
    )  # fmt: skip
    done = ShadowRunFinished(run="v2", run_id=RUN_ID, tenant_id=TENANT, finished_at=T0,
                             turns=3, failed=0)  # fmt: skip
    return ShadowRunRecords(run, decisions, done if finished else None)


def _originals() -> dict[uuid.UUID, Original]:
    def replied(reply: str, tokens: int) -> Original:
        return Original("replied", "llm", "gpt-4o-mini", reply, [], tokens, 10)

    return {uuid.uuid5(RUN_ID, "SM-1"): replied("Olá!", 100),
            uuid.uuid5(RUN_ID, "SM-2"): replied("Abrimos às 8h.", 100),
            uuid.uuid5(RUN_ID, "SM-3"): replied("Das 8h às 18h.", 80)}  # fmt: skip


def test_the_terminal_report_compares_per_conversation_and_in_total() -> None:
    originals = _originals()
    originals[uuid.uuid5(RUN_ID, "SM-3")].tokens_out = 8
    report = compare(_records(), originals, {"SM-1": "Oi\x1b[2J", "SM-2": "Que horas?"})
    text = terminal(report)
    lines = text.splitlines()
    (conv_a,) = [line for line in lines if line.startswith("conv-a ")]
    assert conv_a.split() == [
        "conv-a", "2", "2", "2", "→", "1", "0", "→", "1", "0", "→", "0", "0", "→", "1",
        "220", "→", "220", "0.000042", "→", "0.000042",
    ]  # fmt: skip
    (total,) = [line for line in lines if line.startswith("total ")]
    assert total.split()[1:4] == ["3", "2", "3"]
    assert "hand-off rate 0% → 33%; 2 of 3 turns changed; 0 candidate turns failed" in text
    assert ("candidate: no reply, hand-off (pediu <uma> pessoa); tools handoff_to_human; "
            "110 tokens; 0.000021 USD") in text  # fmt: skip
    assert 'original : reply "Abrimos às 8h."; tools -; 110 tokens; 0.000021 USD' in text
    assert "customer: Que horas?" in text
    assert "\x1b" not in text  # no terminal escape from a customer's message
    assert "customer: Oi\ufffd[2J" in text
    assert "finished" in lines[2]
    unfinished = terminal(compare(_records(finished=False), originals, {}))
    assert "NOT FINISHED: 3 of 3 turns written" in unfinished


def test_the_html_report_is_self_contained_and_escaped() -> None:
    page = to_html(compare(_records(), _originals(), {"SM-2": "<img src=x onerror=alert(1)>"}))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "pediu &lt;uma&gt; pessoa" in page
    assert page.count("</style>") == 1  # the prompt's "</style>" is escaped
    for external in ("<link", "src=", "url(", "@import", "http://", "https://"):
        assert external not in page.replace("&lt;img src=x", ""), external
    assert "Hand-off rate 0% → 33%" in page
    assert page.count("class='changed'") == 2
    # A turn the log no longer has is shown as missing, not dropped.
    missing = to_html(compare(_records(), {}, {}))
    assert missing.count("missing (not in the log)") == 3
