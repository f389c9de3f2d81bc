"""What-if reprocessing on the real platform (issue #7, item 5; ADR 0017).

History: the real decider, projector, API, agent runner (the fake OpenAI server scripted one way,
through the real SDK) and sender (to the Twilio emulator) answer a few conversations of two
tenants at different times. Then `zapflow reprocess agent`, with the fake scripted differently
(a FAQ search, a hand-off instead of a reply, one same answer), while the runner and the sender
keep running: the shadow topic holds the candidate's decisions for exactly the turns in range,
the emulator received nothing, no command or event was written, the live model was not asked
again, and a sender pointed at the shadow topic refuses to start. `zapflow reprocess report`
shows the differences per conversation and in total, in the terminal and in HTML. Refusals (an
unknown tenant, an existing run) write nothing; `--force` replaces a run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from commands import conversation as conv
from events.catalog import EVENT_REGISTRY
from events.conversation import AgentReplied
from events.tenant import AgentSettings, FaqEntry
from projections import agents, status
from projections.agents import text_search_config
from streams import kafka
from streams.log import read_all
from streams.reprocess import CandidateFaq, read_run
from streams.sender import run_sender
from streams.topics import COMMANDS, EVENTS, shadow_topic
from tests.integration import fake_openai as fake
from tests.integration.fake_openai import FakeOpenAI
from tests.integration.sender_rig import Rig, contact, live_rig
from tests.integration.test_agent_runner import runner
from tests.integration.test_query_api import Keyed
from tests.integration.twilio_driver import KEY
from zapflow.cli import main

pytestmark = pytest.mark.integration
WAIT_S = 40.0
CANDIDATE_YAML = """\
system_prompt: Você é a nova assistente da Clínica. Responda em uma frase.
enabled_tools: [handoff_to_human, search_knowledge]
faq:
  - question: Qual o horário de funcionamento?
    answer: Das 8h às 18h, de segunda a sexta.
"""


@pytest.fixture
async def rig(fresh_broker: str, database_url: str, db: asyncpg.Connection) -> AsyncIterator[Rig]:
    async with live_rig(fresh_broker, database_url, db) as live:
        yield live


@pytest.fixture
def llms(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    """The live agent's model and the candidate's (two servers: their requests apart)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    live, candidate = FakeOpenAI(), FakeOpenAI()
    try:
        yield live, candidate
    finally:
        live.close()
        candidate.close()


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`zapflow ARGV` in a thread (it runs its own event loop): exit code, stdout, stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        code = await asyncio.to_thread(main, list(argv))
    finally:  # the command configures logging for a process of its own
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, out, err


async def _replied(rig: Rig, keyed: Keyed) -> list[AgentReplied]:
    found = []
    for envelope in await rig.events(keyed):
        if envelope.type == "AgentReplied":
            event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version,
                                          envelope.payload)  # fmt: skip
            assert isinstance(event, AgentReplied)
            found.append(event)
    return found


async def _until(probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool]) -> Any:
    deadline = time.monotonic() + WAIT_S
    while True:
        value = await probe()
        if done(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def _more(count: int, found: list[AgentReplied]) -> bool:
    return len(found) > count


async def _ends(brokers: str, topic: str) -> dict[int, int]:
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        partitions = await status.topic_partitions(consumer, topic)
        return await status.log_ends(consumer, topic, partitions, {})
    finally:
        await consumer.stop()


async def _topics(brokers: str) -> set[str]:
    admin = kafka.admin(brokers)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def test_a_what_if_run_sends_nothing_and_its_report_shows_the_differences(
    rig: Rig, llms: tuple[FakeOpenAI, FakeOpenAI], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    live, candidate = llms
    a, b = rig.a, rig.b
    now = datetime.now(UTC)

    def ago(hours: float) -> datetime:
        return now - timedelta(hours=hours)

    # (tenant, contact, message, hours ago): in range [2.5 h ago, 1.5 h ago) are A's 2nd, 3rd
    # and 4th messages only (the 2nd and 3rd of one conversation).
    plan = [(a, contact(1), "Bom dia", 3.0), (a, contact(2), "Que horas vocês abrem?", 2.0),
            (a, contact(2), "Quero falar com alguém", 1.95),
            (a, contact(3), "Vocês aceitam convênio?", 1.9), (a, contact(4), "Obrigado", 1.0),
            (b, contact(5), "Que horas vocês abrem?", 2.0)]  # fmt: skip
    live.script.extend(fake.text(f"Resposta original {n}") for n in range(len(plan)))
    sids: list[str] = []
    async with runner(rig.brokers, rig.database_url, live), rig.sender():
        for n, (keyed, who, body, hours) in enumerate(plan):
            envelope = rig.inbound(keyed, who, body, issued_at=ago(hours))
            sids.append(envelope.payload["message_sid"])
            before = len(await _replied(rig, keyed))
            await rig.send(envelope)
            found = await _until(partial(_replied, rig, keyed), partial(_more, before))
            assert found[-1].trigger_message_sid == sids[n], "the live agent did not answer"
        # Every original reply sent, and its status callbacks in (the log is quiet from then).
        for keyed in (a, b):
            for replied in await _replied(rig, keyed):
                assert replied.outbound_id is not None
                row = await rig.until_status(keyed, replied.outbound_id, lambda s: s == "read")
                assert row is not None
                assert row["status"] == "read", row
        sent = rig.received()
        assert len(sent) == len(plan)

        # -- the what-if run, with the live runner and the sender running ----------------------
        ledger = await rig.db.fetchval("SELECT count(*) FROM send_ledger")
        ends = {t: await _ends(rig.brokers, t) for t in (EVENTS, COMMANDS)}
        asked = len(live.requests)
        candidate.script.extend([
            fake.tool("search_knowledge", '{"query": "horário"}'),
            fake.text("<b>Abrimos às 8h</b>, até as 18h."),
            fake.tool("handoff_to_human", '{"reason": "pediu uma pessoa"}'),
            fake.text("Resposta original 3"),
        ])  # fmt: skip
        config = tmp_path / "agent.yaml"
        config.write_text(CANDIDATE_YAML)
        monkeypatch.chdir(tmp_path)
        for name, value in {
            "KAFKA_BOOTSTRAP_SERVERS": rig.brokers, "DATABASE_URL": rig.database_url,
            "OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": candidate.base_url,
            "ZAPFLOW_LLM_MAX_RETRIES": "0", "ZAPFLOW_STATE_DIR": str(tmp_path / "state"),
        }.items():  # fmt: skip
            monkeypatch.setenv(name, value)
        since, until = ago(2.5).isoformat(), ago(1.5).isoformat()
        agent_argv = ["reprocess", "agent", "--tenant", str(a.tenant.tenant_id), "--since", since,
                      "--until", until, "--config", str(config), "--concurrency", "1"]  # fmt: skip
        code, out, err = await cli(capsys, *agent_argv, "--run", "prompt-v2")
        assert code == 0, err
        summary = orjson.loads(out)
        assert (summary["turns"], summary["conversations"], summary["failed"]) == (3, 2, 0)
        await asyncio.sleep(2.0)  # time for the sender or the runner to act, if they would
        # A sender pointed at the shadow topic by mistake refuses to start.
        with pytest.raises(ValueError, match="shadow topic"):
            await run_sender(rig.brokers, rig.database_url, KEY, rig.options(), asyncio.Event(),
                             topic=shadow_topic("prompt-v2"))  # fmt: skip

        assert rig.received() == sent, "a request reached the Twilio emulator"
        assert await rig.db.fetchval("SELECT count(*) FROM send_ledger") == ledger
        assert {t: await _ends(rig.brokers, t) for t in (EVENTS, COMMANDS)} == ends
        assert len(live.requests) == asked, "the live agent ran a turn"

    # -- the shadow topic: the candidate's decisions for exactly the turns in range ------------
    records = await read_run(rig.brokers, "prompt-v2")
    assert records.finished is not None
    assert records.finished.turns == 3
    assert (records.run.tenant_id, records.run.turns, records.run.agent) == (
        a.tenant.tenant_id, 3, "llm")  # fmt: skip
    decided = {d.trigger_message_sid: d for d in records.decisions}
    assert set(decided) == {sids[1], sids[2], sids[3]}
    opening, handoff, same = decided[sids[1]], decided[sids[2]], decided[sids[3]]
    assert (opening.candidate.verdict, opening.candidate.result.reply) == (
        "replied", "<b>Abrimos às 8h</b>, até as 18h.")  # fmt: skip
    (search,) = opening.candidate.result.tool_calls
    assert (search.name, search.accepted) == ("search_knowledge", True)
    assert search.result == "Das 8h às 18h, de segunda a sexta."  # the candidate's own FAQ
    assert (handoff.candidate.result.reply, handoff.candidate.handoff) == (None, "pediu uma pessoa")
    assert same.candidate.result.reply == "Resposta original 3"
    assert all(d.candidate.result.model == "gpt-4o-mini" and d.candidate.result.tokens_in > 0
               and d.candidate.cost_usd is not None for d in records.decisions)  # fmt: skip
    # Each refers to the original outcome in the log.
    consumer = kafka.groupless_consumer(rig.brokers)
    await consumer.start()
    try:
        logged = {(p.partition, p.offset): e async for p, e in read_all(consumer)}
    finally:
        await consumer.stop()
    for decision in records.decisions:
        original = logged[(decision.original.partition, decision.original.offset)]
        assert (original.event_id, original.type) == (decision.original.event_id, "AgentReplied")
        assert original.payload["trigger_message_sid"] == decision.trigger_message_sid

    # What the candidate model was given: its prompt and the history as the live turn had it.
    first, with_faq, second, third = candidate.requests
    assert first["messages"][0] == {"role": "system", "content": CANDIDATE_YAML.splitlines()[0]
                                    .removeprefix("system_prompt: ")}  # fmt: skip
    assert first["messages"][1:] == [{"role": "user", "content": "Que horas vocês abrem?"}]
    assert "Das 8h às 18h" in str(with_faq["messages"][-1])
    assert [(m["role"], m["content"]) for m in second["messages"][1:]] == [
        ("user", "Que horas vocês abrem?"), ("assistant", "Resposta original 1"),
        ("user", "Quero falar com alguém")]  # fmt: skip
    assert third["messages"][1:] == [{"role": "user", "content": "Vocês aceitam convênio?"}]

    # -- the report ----------------------------------------------------------------------------
    page = tmp_path / "report.html"
    code, text, err = await cli(capsys, "reprocess", "report", "prompt-v2", "--html", str(page))
    assert code == 0, err
    originals = {r.trigger_message_sid: r for r in await _replied(rig, a)}
    tokens_before = sum(originals[s].tokens_in + originals[s].tokens_out for s in sids[1:4])
    tokens_after = sum(d.candidate.result.tokens_in + d.candidate.result.tokens_out
                       for d in records.decisions)  # fmt: skip
    lines = text.splitlines()
    for n in (2, 3):
        cid = conv.conversation_id(a.tenant.tenant_id, contact(n))
        assert any(line.startswith(cid) for line in lines), (cid, text)
    (total,) = [line for line in lines if line.startswith("total ")]
    assert f"{tokens_before:,} → {tokens_after:,}" in total, total
    assert total.split()[1:6] == ["3", "2", "3", "→", "2"]  # 3 turns, 2 changed, replies 3 → 2
    assert "hand-off rate 0% → 33%; 2 of 3 turns changed; 0 candidate turns failed" in text
    assert "candidate: no reply, hand-off (pediu uma pessoa); tools handoff_to_human;" in text
    assert 'original : reply "Resposta original 2"; tools -;' in text
    assert 'candidate: reply "<b>Abrimos às 8h</b>, até as 18h."; tools search_knowledge;' in text
    assert "customer: Quero falar com alguém" in text
    assert "Resposta original 0" not in text
    assert "Resposta original 4" not in text
    html = page.read_text()
    assert "&lt;b&gt;Abrimos às 8h&lt;/b&gt;, até as 18h." in html
    assert "<b>Abrimos" not in html
    assert "<script" not in html
    assert "<link" not in html
    assert html.count("class='changed'") == 2
    assert html.count("class='same'") == 1
    assert "Hand-off rate 0% → 33%" in html

    # -- refusals write nothing; --force replaces a run ----------------------------------------
    topics = await _topics(rig.brokers)
    stranger = str(uuid.uuid4())
    code, _, err = await cli(capsys, *agent_argv[:2], "--tenant", stranger, *agent_argv[4:],
                             "--run", "stranger")  # fmt: skip
    assert code == 2
    assert f"zapflow: error: --tenant={stranger}: no such tenant" in err
    code, _, err = await cli(capsys, *agent_argv, "--run", "prompt-v2")
    assert code == 1
    assert "run 'prompt-v2' exists" in err
    assert "--force" in err
    assert await _topics(rig.brokers) == topics
    again = await read_run(rig.brokers, "prompt-v2")
    assert (again.run.run_id, len(again.decisions)) == (records.run.run_id, 3)
    empty = ["--since", ago(0.5).isoformat(), "--until", now.isoformat()]
    code, out, err = await cli(capsys, *agent_argv[:4], *empty, *agent_argv[8:], "--run",
                               "prompt-v2", "--force")  # fmt: skip
    assert code == 0, err
    replaced = await read_run(rig.brokers, "prompt-v2")
    assert replaced.run.run_id != records.run.run_id
    assert (replaced.run.turns, replaced.decisions) == (0, [])
    assert len(candidate.requests) == 4
    assert await _ends(rig.brokers, EVENTS) == ends[EVENTS]
    assert await _ends(rig.brokers, COMMANDS) == ends[COMMANDS]


async def test_the_candidate_faq_is_searched_as_the_live_faq(
    migrated: asyncpg.Connection, database_url: str
) -> None:
    """Same stemming, rank and order as the projected `faq_entries` search, in each language."""
    for language, faq, queries in [
        ("pt-BR", [("Qual o horário de funcionamento?", "Das 8h às 18h."),
                   ("Vocês aceitam convênio?", "Aceitamos Unimed e Amil."),
                   ("Onde fica a clínica?", "Na Rua das Flores, 10, perto do horário de ônibus.")],
         ["quais os horários", "convênios", "horário da clínica", "estacionamento", "o de"]),
        ("en", [("What are your opening hours?", "From 8 to 6."),
                ("Do you take insurance?", "Yes, most plans.")],
         ["opening", "insured hours", "parking"]),
    ]:  # fmt: skip
        tenant = uuid.uuid4()
        for position, (question, answer) in enumerate(faq):
            await migrated.execute(
                "INSERT INTO faq_entries (tenant_id, position, question, answer, language) "
                "VALUES ($1, $2, $3, $4, $5::regconfig)",
                tenant, position, question, answer, text_search_config(language),
            )  # fmt: skip
        settings = AgentSettings(system_prompt="x", reply_language=language,
                                 faq=[FaqEntry(question=q, answer=a) for q, a in faq])  # fmt: skip
        pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1,
                                         statement_cache_size=0)  # fmt: skip
        try:
            search = CandidateFaq(settings, pool)
            for query in queries:
                live = [m.answer for m in await agents.search_faq(migrated, tenant, query)]
                assert await search.search(query) == live, (language, query)
        finally:
            await pool.close()
    assert await CandidateFaq(AgentSettings(system_prompt="x"), None).search("horário") == []
