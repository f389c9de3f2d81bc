"""Agent turns against a fake OpenAI server through the real `openai` SDK, and the FAQ agent.

The model receives the tenant's prompt and the conversation; tools run only when enabled and
with valid arguments (refusals go back to the model and into the record); the SDK's retries are
bounded and end in the fallback and a hand-off; a breaker stops calling a failing model.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest

from events.tenant import AgentSettings
from streams.llm import (
    Breaker,
    FaqAgent,
    Knowledge,
    OpenAIChat,
    Role,
    TurnRequest,
    TurnResult,
    prompt_hash,
)
from tests.integration import fake_openai as fake
from tests.integration.fake_openai import FakeOpenAI

pytestmark = pytest.mark.integration
TENANT = uuid.UUID(int=0xA)
SETTINGS = AgentSettings(system_prompt="Você é a assistente da Clínica Sorriso.",
                         enabled_tools=["handoff_to_human", "search_knowledge"],
                         fallback_message="Uma pessoa vai continuar.")  # fmt: skip
HISTORY: list[tuple[Role, str]] = [
    ("user", "Oi"),
    ("assistant", "Olá! Como posso ajudar?"),
    ("user", "Qual o horário?"),
]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the SDK honours HTTP(S)_PROXY
    running = FakeOpenAI()
    try:
        yield running
    finally:
        running.close()


def _model(server: FakeOpenAI, retries: int = 2, timeout: float = 5.0) -> OpenAIChat:
    client = openai.AsyncOpenAI(api_key="sk-test", base_url=server.base_url,
                                max_retries=retries, timeout=timeout)  # fmt: skip
    return OpenAIChat(client)


async def _no_knowledge(query: str) -> list[str]:
    raise AssertionError(f"the knowledge search ran for {query!r}")


async def _turn(model: OpenAIChat | FaqAgent, settings: AgentSettings = SETTINGS,
                knowledge: Knowledge = _no_knowledge) -> TurnResult:  # fmt: skip
    request = TurnRequest(TENANT, settings, "gpt-4o-mini", HISTORY)
    return await model.turn(request, knowledge)


async def test_the_model_gets_the_prompt_and_the_history(server: FakeOpenAI) -> None:
    server.script.append(fake.text("Abrimos das 8h às 18h."))
    result = await _turn(_model(server))
    (sent,) = server.requests
    assert sent["model"] == "gpt-4o-mini"
    assert sent["messages"] == [
        {"role": "system", "content": SETTINGS.system_prompt},
        {"role": "user", "content": "Oi"},
        {"role": "assistant", "content": "Olá! Como posso ajudar?"},
        {"role": "user", "content": "Qual o horário?"},
    ]  # fmt: skip
    assert [t["function"]["name"] for t in sent["tools"]] == ["handoff_to_human",
                                                              "search_knowledge"]  # fmt: skip
    assert (result.reply, result.fallback_reason, result.agent) == (
        "Abrimos das 8h às 18h.", None, "llm",
    )  # fmt: skip
    assert result.tokens_in > 0
    assert result.tokens_out > 0
    expected = {"model": "gpt-4o-mini", "messages": sent["messages"], "tools": sent["tools"]}
    assert result.prompt_hash == prompt_hash(expected)


async def test_search_then_answer_with_the_tool_result_fed_back(server: FakeOpenAI) -> None:
    server.script.extend([fake.tool("search_knowledge", '{"query": "horário"}'),
                          fake.text("Das 8h às 18h.")])  # fmt: skip
    asked: list[str] = []

    async def knowledge(query: str) -> list[str]:
        asked.append(query)
        return ["Abrimos de segunda a sexta, das 8h às 18h."]

    result = await _turn(_model(server), knowledge=knowledge)
    assert asked == ["horário"]
    assert result.reply == "Das 8h às 18h."
    (call,) = result.tool_calls
    assert (call.name, call.accepted, call.arguments) == ("search_knowledge", True,
                                                          {"query": "horário"})  # fmt: skip
    second = server.requests[1]["messages"]
    assistant, answer = second[-2], second[-1]
    assert answer == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"],
                      "content": "Abrimos de segunda a sexta, das 8h às 18h."}  # fmt: skip


async def test_handoff_ends_the_turn(server: FakeOpenAI) -> None:
    server.script.append(fake.tool("handoff_to_human", '{"reason": "pediu um humano"}'))
    result = await _turn(_model(server))
    assert len(server.requests) == 1
    assert [(c.name, c.accepted, c.arguments) for c in result.tool_calls] == [
        ("handoff_to_human", True, {"reason": "pediu um humano"})
    ]


@pytest.mark.parametrize(
    ("name", "arguments", "why"),
    [
        ("close_conversation", '{"reason": "x"}', "not available"),  # not enabled
        ("drop_tables", "{}", "not available"),
        ("handoff_to_human", '{"reason": "x", "tenant_id": "someone-else"}', "unknown arguments"),
        ("handoff_to_human", '{"reason": ""}', "non-empty string"),
        ("search_knowledge", "not json", "not valid JSON"),
    ],
)
async def test_a_refused_tool_call_is_fed_back_and_recorded(
    server: FakeOpenAI, name: str, arguments: str, why: str
) -> None:
    server.script.extend([fake.tool(name, arguments), fake.text("Posso ajudar em algo mais?")])
    result = await _turn(_model(server))
    (call,) = result.tool_calls
    assert (call.name, call.accepted) == (name, False)
    assert call.result is not None
    assert why in call.result
    fed_back = server.requests[1]["messages"][-1]
    assert fed_back["role"] == "tool"
    assert why in fed_back["content"]
    assert result.reply == "Posso ajudar em algo mais?"


async def test_retries_are_bounded_then_fallback_and_handoff(server: FakeOpenAI) -> None:
    server.script.extend([fake.rate_limited(), fake.server_error(), fake.rate_limited()])
    result = await _turn(_model(server, retries=2))
    assert len(server.requests) == 3  # the first call and two retries
    assert server.retry_counts == ["0", "1", "2"]
    assert (result.reply, result.fallback_reason) == (
        "Uma pessoa vai continuar.", "model_error: RateLimitError",
    )  # fmt: skip


async def test_a_slow_model_times_out_into_the_fallback(server: FakeOpenAI) -> None:
    server.script.append(fake.Scripted(content="tarde demais", delay_s=1.0))
    result = await _turn(_model(server, retries=0, timeout=0.3))
    assert result.fallback_reason == "model_error: APITimeoutError"


async def test_the_breaker_stops_calling_a_failing_model(server: FakeOpenAI) -> None:
    now = [100.0]
    client = openai.AsyncOpenAI(api_key="sk", base_url=server.base_url, max_retries=0,
                                timeout=5.0)  # fmt: skip
    model = OpenAIChat(client, Breaker(threshold=2, cooldown_s=30), clock=lambda: now[0])
    server.script.extend([fake.server_error(), fake.server_error()])
    for _ in range(2):
        assert (await _turn(model)).fallback_reason == "model_error: InternalServerError"
    assert (await _turn(model)).fallback_reason == "model_circuit_open"
    assert len(server.requests) == 2  # open: not called
    now[0] += 31
    server.script.append(fake.text("De volta."))
    assert (await _turn(model)).reply == "De volta."


async def test_the_faq_agent_answers_from_the_faq_or_hands_off() -> None:
    async def knowledge(query: str) -> list[str]:
        return ["Das 8h às 18h."] if "horário" in query else []

    result = await _turn(FaqAgent(), knowledge=knowledge)
    assert (result.agent, result.reply, result.fallback_reason) == ("faq", "Das 8h às 18h.", None)
    request = TurnRequest(TENANT, SETTINGS, "faq", [("user", "Vocês têm estacionamento?")])
    result = await FaqAgent().turn(request, knowledge)
    assert result.reply == "Uma pessoa vai continuar."
    assert [(c.name, c.accepted) for c in result.tool_calls] == [("handoff_to_human", True)]
