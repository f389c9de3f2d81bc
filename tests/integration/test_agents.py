"""Agent settings through the log: `zapflow agents configure` → decider → projector → stored,
searchable FAQ under row-level security; bad files and unknown tenants change nothing."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from fastapi.testclient import TestClient

from events.tenant import AgentSettings, FaqEntry
from projections import agents, conversations, versions
from projections.database import APP_ROLE, connect, with_user
from tests.integration.test_query_api import Keyed
from tests.integration.test_query_api import platform as platform  # the fixture
from zapflow.agents import configure, parse_settings, show
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints

pytestmark = pytest.mark.integration

FAQ = [
    FaqEntry(question="Qual o horário de funcionamento?",
             answer="Abrimos de segunda a sexta, das 8h às 18h."),
    FaqEntry(question="Vocês aceitam convênio?", answer="Aceitamos Unimed e Amil."),
]  # fmt: skip


async def _search(
    database_url: str, tenant: uuid.UUID, query: str, scope: uuid.UUID | None = None
) -> list[str]:
    """As the API role, with `scope` (default: `tenant`) set: what the FAQ agent would find."""
    conn = await connect(with_user(database_url, APP_ROLE))
    try:
        async with conn.transaction():
            await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(scope or tenant))
            return [m.answer for m in await agents.search_faq(conn, tenant, query)]
    finally:
        await conn.close()


async def test_settings_go_through_the_log_and_the_faq_is_searchable_by_its_tenant_only(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, database_url: str
) -> None:
    _, a, b = platform
    endpoints = Endpoints(fresh_broker, database_url)
    settings = AgentSettings(system_prompt="Você é a assistente da Clínica Sorriso.",
                             model="gpt-4o-mini", enabled_tools=["handoff_to_human",
                                                                 "search_knowledge"],
                             faq=FAQ)  # fmt: skip
    done = await configure(a.tenant.tenant_id, settings, endpoints, 10.0)
    assert done["settings"] == settings.model_dump(mode="json")
    assert (await show(a.tenant.tenant_id, endpoints, 10.0))["configured"] is True
    assert (await show(b.tenant.tenant_id, endpoints, 10.0))["configured"] is False

    # Stemmed in the tenant's language: "horários" finds "horário".
    found = await _search(database_url, a.tenant.tenant_id, "quais os horários")
    assert found == ["Abrimos de segunda a sexta, das 8h às 18h."]
    assert await _search(database_url, b.tenant.tenant_id, "horário") == []
    # Row-level security: with B's tenant set, even a query naming A's id finds nothing.
    assert await _search(database_url, a.tenant.tenant_id, "horário", b.tenant.tenant_id) == []
    assert await _search(database_url, a.tenant.tenant_id, "estacionamento") == []
    assert await _search(database_url, a.tenant.tenant_id, "o de") == []  # stop words only

    # After a rebuild swaps in a new version of the conversation read models (where command
    # results are), configuring still sees its outcome.
    await versions.rebuild(fresh_broker, database_url, conversations.NAME, poll_s=0.2)
    replaced = settings.model_copy(update={"faq": FAQ[1:]})
    await configure(a.tenant.tenant_id, replaced, endpoints, 10.0)
    assert await _search(database_url, a.tenant.tenant_id, "horário") == []
    assert await _search(database_url, a.tenant.tenant_id, "convênio") == [
        "Aceitamos Unimed e Amil."
    ]


async def test_an_unknown_tenant_is_refused_before_anything_is_sent(
    migrated: asyncpg.Connection, fresh_broker: str, database_url: str
) -> None:
    settings = AgentSettings(system_prompt="x")
    with pytest.raises(ConfigurationError, match="no such tenant"):
        await configure(uuid.uuid4(), settings, Endpoints(fresh_broker, database_url), 5.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{", "is not JSON"),
        ('{"model": "gpt-4o"}', "system_prompt: Field required"),
        ('{"system_prompt": "x", "temperature": 3}', "temperature: Input should be less"),
        ('{"system_prompt": "x", "enabled_tools": ["rm_rf"]}', "enabled_tools.0: Input should"),
        ('{"system_prompt": "x", "enabled_tools": ["close_conversation", "close_conversation"]}',
         "lists a tool twice"),
        ('{"system_prompt": "x", "templates": [{"purpose": "fallback", "content_sid": "HX1"}]}',
         "templates.0.content_sid"),
        ('{"system_prompt": "x", "surprise": 1}', "surprise: Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_a_bad_settings_file_names_the_field(text: str, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem):
        parse_settings(text, "agent.json")


@pytest.mark.parametrize("weakened", [False, True])
async def test_agent_tables_are_under_row_level_security(
    migrated: asyncpg.Connection, database_url: str, weakened: bool
) -> None:
    """As the API role: A sees only A's rows, no tenant set sees none; and the check is not
    vacuous (with RLS disabled it sees B's)."""
    a, b = uuid.uuid4(), uuid.uuid4()
    for tenant in (a, b):
        await migrated.execute("INSERT INTO agent_settings VALUES ($1, '{}', 1, now())", tenant)
        await migrated.execute(
            "INSERT INTO faq_entries (tenant_id, position, question, answer, language) "
            "VALUES ($1, 0, 'q', 'a', 'simple')", tenant,
        )  # fmt: skip
    if weakened:
        await migrated.execute("ALTER TABLE agent_settings DISABLE ROW LEVEL SECURITY")
        await migrated.execute("ALTER TABLE faq_entries DISABLE ROW LEVEL SECURITY")
    conn = await connect(with_user(database_url, APP_ROLE))
    try:
        for table in ("agent_settings", "faq_entries"):
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(a))
                seen = {r["tenant_id"] for r in await conn.fetch(f"SELECT tenant_id FROM {table}")}  # noqa: S608
            assert seen == ({a, b} if weakened else {a}), table
            unscoped = await conn.fetch(f"SELECT tenant_id FROM {table}")  # noqa: S608
            assert len(unscoped) == (2 if weakened else 0), table
    finally:
        await conn.close()
