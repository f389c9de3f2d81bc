"""Each tenant's agent settings and FAQ, projected from `AgentConfigured` (migration 0011).

Written as the `zapflow_projector` role with the event's tenant set, like the conversation read
models, so row-level security checks every row. A newer `AgentConfigured` replaces the whole
set; an older or replayed one changes nothing (`updated_seq`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from uuid import UUID

import orjson

from events.catalog import EVENT_REGISTRY
from events.envelope import EventEnvelope
from events.tenant import AgentConfigured, AgentSettings
from projections.batch import ModuleProjection
from projections.database import Conn

NAME: Final = "agent_settings"
TABLES: Final = ("agent_settings", "faq_entries")
"""The tables it writes (in `public`; a per-tenant rebuild replaces one tenant's rows of them)."""
PROJECTOR_ROLE: Final = "zapflow_projector"
_LANGUAGES: Final = {"pt": "portuguese", "es": "spanish", "en": "english", "fr": "french",
                     "it": "italian", "de": "german"}  # fmt: skip

_UPSERT: Final = """
INSERT INTO agent_settings (tenant_id, settings, updated_seq, updated_at)
VALUES ($1, $2::jsonb, $3, $4)
ON CONFLICT (tenant_id) DO UPDATE SET settings = EXCLUDED.settings,
    updated_seq = EXCLUDED.updated_seq, updated_at = EXCLUDED.updated_at
WHERE agent_settings.updated_seq < EXCLUDED.updated_seq
RETURNING tenant_id
"""
_FAQ: Final = """
INSERT INTO faq_entries (tenant_id, position, question, answer, language)
SELECT $1, u.position, u.question, u.answer, $5::regconfig
FROM unnest($2::int[], $3::text[], $4::text[]) AS u(position, question, answer)
"""
# Any of the words (a customer's sentence rarely has all of an entry's): the query's lexemes,
# stemmed and without stop words, joined with OR; entries sharing more of them rank higher.
_SEARCH: Final = """
SELECT position, question, answer, ts_rank(search, q) AS rank
FROM faq_entries,
     LATERAL CAST(replace(plainto_tsquery(language, $2)::text, ' & ', ' | ') AS tsquery) AS q
WHERE tenant_id = $1 AND search @@ q
ORDER BY rank DESC, position LIMIT $3
"""


def text_search_config(language: str) -> str:
    """PostgreSQL's text-search configuration for a BCP 47 tag (stemming where it has one)."""
    return _LANGUAGES.get(language.split("-")[0].lower(), "simple")


async def apply(conn: Conn, envelope: EventEnvelope) -> None:
    """Project one event; only `AgentConfigured` concerns the agent settings."""
    if envelope.type != "AgentConfigured":
        return
    event = EVENT_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    assert isinstance(event, AgentConfigured)
    settings, tenant = event.settings, envelope.tenant_id
    await conn.execute(
        "SELECT set_config('role', $1, true), set_config('app.tenant_id', $2, true)",
        PROJECTOR_ROLE, str(tenant),
    )  # fmt: skip
    written = await conn.fetchval(
        _UPSERT, tenant, orjson.dumps(settings.model_dump(mode="json")).decode(),
        envelope.tenant_seq, envelope.occurred_at,
    )  # fmt: skip
    if written is not None:  # else the row already reflects this event or a later one
        await conn.execute("DELETE FROM faq_entries WHERE tenant_id = $1", tenant)
        if settings.faq:
            await conn.execute(
                _FAQ, tenant, list(range(len(settings.faq))),
                [_clean(entry.question) for entry in settings.faq],
                [_clean(entry.answer) for entry in settings.faq],
                text_search_config(settings.reply_language),
            )  # fmt: skip
    await conn.execute("SELECT set_config('role', 'none', true)")


def _clean(text: str) -> str:
    return text.replace("\x00", "\ufffd")  # PostgreSQL text refuses NUL


@dataclass(frozen=True, slots=True)
class FaqMatch:
    position: int
    question: str
    answer: str
    rank: float


async def settings_of(conn: Conn, tenant_id: UUID) -> AgentSettings | None:
    """The tenant's settings, inside a transaction with the tenant set (RLS)."""
    raw = await conn.fetchval("SELECT settings FROM agent_settings WHERE tenant_id = $1", tenant_id)
    return None if raw is None else AgentSettings.model_validate_json(raw)


async def search_faq(conn: Conn, tenant_id: UUID, query: str, limit: int = 3) -> list[FaqMatch]:
    """The tenant's FAQ entries sharing words with `query`, best first (stemmed in the tenant's
    language, stop words ignored), inside a transaction with the tenant set (RLS)."""
    rows = await conn.fetch(_SEARCH, tenant_id, _clean(query), limit)
    return [FaqMatch(r["position"], r["question"], r["answer"], r["rank"]) for r in rows]


PROJECTION: Final = ModuleProjection(NAME, apply, types=frozenset({"AgentConfigured"}))
