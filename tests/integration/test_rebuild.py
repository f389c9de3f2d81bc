"""Versioned projections: a rebuild fills a new version while the old one serves, then swaps.

The platform runs (decider, live projector, query API); version 1 is damaged on purpose (as a
projection bug would leave it), a rebuild of `conversations` runs while queries keep coming and
messages keep arriving, and after the swap the API answers from the new version: repaired, with
the messages that arrived during and after the rebuild (the live projector carries on from the
new version's positions), still isolated per tenant. `drop-old` then removes version 1.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient

from projections import conversations, versions
from projections.migrations import migrate
from tests.integration.test_projections_status import cli_env as cli_env  # the fixture
from tests.integration.test_projections_status import run_cli
from tests.integration.test_query_api import Keyed, _get, _until
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.twilio_driver import inbound, post, sid

pytestmark = pytest.mark.integration


def _send(client: TestClient, keyed: Keyed, contact: str, body: str) -> None:
    reply = post(client, keyed.tenant, {**inbound(keyed.tenant, sid()), "From": contact,
                                        "Body": body})  # fmt: skip
    assert reply.status_code == 200


def _contact(n: int) -> str:
    return f"whatsapp:+55119876500{n:02d}"


def _previews(client: TestClient, keyed: Keyed) -> dict[str, str]:
    response = _get(client, "/v1/conversations", keyed, limit=100)
    assert response.status_code == 200, response.text
    return {c["contact"]: c["last_message_preview"] for c in response.json()["items"]}


async def test_a_rebuild_swaps_in_a_new_version_while_queries_keep_answering(
    platform: tuple[TestClient, Keyed, Keyed], db: asyncpg.Connection, fresh_broker: str,
    database_url: str,
) -> None:  # fmt: skip
    client, a, b = platform
    for n in range(3):
        await asyncio.to_thread(_send, client, a, _contact(n), f"mensagem {n}")
    await asyncio.to_thread(_send, client, b, _contact(0), "segredo de B")
    expected = {_contact(n): f"mensagem {n}" for n in range(3)}
    assert await _until(lambda: _previews(client, a), lambda p: p == expected) == expected
    # Version 1 goes wrong, as a projection bug would leave it; the log is still right.
    await db.execute(
        "UPDATE conversations SET last_message_preview = 'damaged' WHERE tenant_id = $1",
        a.tenant.tenant_id,
    )
    damaged = dict.fromkeys(expected, "damaged")
    assert await asyncio.to_thread(_previews, client, a) == damaged

    seen: list[dict[str, str]] = []
    rebuild = asyncio.create_task(
        versions.rebuild(fresh_broker, database_url, conversations.NAME, poll_s=0.2)
    )
    await asyncio.to_thread(_send, client, a, _contact(3), "durante o rebuild")
    while not rebuild.done():  # the old version serves, whole, all along
        seen.append(await asyncio.to_thread(_previews, client, a))
        await asyncio.sleep(0.05)
    rebuilt = rebuild.result()
    assert (rebuilt.version, rebuilt.schema, rebuilt.replaced) == (2, "conversations_v2", 1)
    # Every answer is one version whole: the old one (damaged) until the swap, then the new one
    # (repaired); never a mix, never back. The last answers may already be the new version:
    # the swap commits a moment before the rebuild returns.
    versions_seen = [
        "old" if page.items() >= damaged.items() else "new" if page.items() >= expected.items()
        else f"mixed: {page}"
        for page in seen
    ]  # fmt: skip
    assert versions_seen, "no query ran during the rebuild"
    assert versions_seen[0] == "old"
    assert versions_seen == sorted(versions_seen, key=lambda v: v != "old"), versions_seen
    assert set(versions_seen) <= {"old", "new"}, versions_seen

    # After the swap: the repaired version, with the message sent during the rebuild; the
    # rebuild's projector has stopped, so only the live one can bring the next message into it.
    during = expected | {_contact(3): "durante o rebuild"}
    assert await _until(lambda: _previews(client, a), lambda p: p == during) == during
    await asyncio.to_thread(_send, client, a, _contact(4), "depois do swap")
    after = during | {_contact(4): "depois do swap"}
    assert await _until(lambda: _previews(client, a), lambda p: p == after) == after
    assert await asyncio.to_thread(_previews, client, b) == {_contact(0): "segredo de B"}
    state = {v.version: v.state for v in await versions.versions(db, conversations.NAME)}
    assert state == {1: "retired", 2: "active"}

    dropped = await versions.drop_old(db)
    assert [(v.version, v.schema) for v in dropped] == [(1, "public")]
    assert await db.fetchval("SELECT to_regclass('public.conversations')") is None
    assert await asyncio.to_thread(_previews, client, a) == after
    assert not await db.fetchval(
        "SELECT count(*) FROM projection_checkpoints WHERE projection = $1", conversations.NAME
    )


async def test_a_new_version_has_the_same_tables_indexes_policies_and_grants(
    migrated: asyncpg.Connection,
) -> None:
    """schemas/projections/conversations.sql builds what the migrations built for version 1."""
    built = await versions.begin(migrated, conversations.NAME)
    assert (built.version, built.state) == (2, "building")
    assert await _structure(migrated, built.schema) == await _structure(migrated, "public")
    # Asking again resumes the unfinished version rather than starting a third.
    assert await versions.begin(migrated, conversations.NAME) == built


async def _structure(conn: asyncpg.Connection, schema: str) -> list[Any]:
    tables = list(conversations.TABLES)
    queries = [
        "SELECT table_name, column_name, data_type, is_nullable, column_default, "
        "generation_expression FROM information_schema.columns WHERE table_schema = $1 "
        "AND table_name = ANY($2) ORDER BY 1, 2",
        "SELECT tablename, indexname, replace(indexdef, $1 || '.', '') FROM pg_indexes "
        "WHERE schemaname = $1 AND tablename = ANY($2) ORDER BY 1, 2",
        "SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check "
        "FROM pg_policies WHERE schemaname = $1 AND tablename = ANY($2) ORDER BY 1, 2",
        "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 "
        "AND c.relname = ANY($2) ORDER BY 1",
        "SELECT table_name, grantee, privilege_type FROM information_schema.role_table_grants "
        "WHERE table_schema = $1 AND table_name = ANY($2) "
        "AND grantee IN ('zapflow_app', 'zapflow_projector') ORDER BY 1, 2, 3",
        "SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) FROM pg_constraint k "
        "JOIN pg_class c ON c.oid = k.conrelid WHERE k.connamespace = $1::regnamespace "
        "AND c.relname = ANY($2) ORDER BY 1, 2",
    ]
    out: list[Any] = []
    for query in queries:
        rows = await conn.fetch(query, schema, tables)
        out.append([tuple(str(v).removeprefix(f"{schema}.") for v in row) for row in rows])
    return out


async def test_rebuild_refuses_what_it_cannot_build(migrated: asyncpg.Connection) -> None:
    with pytest.raises(versions.UnknownProjection, match="versioned projections: conversations"):
        await versions.begin(migrated, "tenant_directory")
    with pytest.raises(versions.UnknownProjection):
        await versions.drop_old(migrated, "nope")
    built = await versions.begin(migrated, conversations.NAME)
    assert await versions.drop_old(migrated) == []  # nothing retired: nothing dropped
    await versions.swap(migrated, built)
    with pytest.raises(versions.RebuildRefused, match="not being built"):
        await versions.swap(migrated, built)  # already active


async def test_the_migrated_database_starts_at_version_1(db: asyncpg.Connection) -> None:
    await migrate(db)
    (only,) = await versions.versions(db)
    assert (only.projection, only.version, only.schema, only.state) == (
        conversations.NAME, 1, "public", "active",
    )  # fmt: skip


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    return await run_cli(capsys, "projections", *argv)


@pytest.mark.usefixtures("cli_env")
async def test_the_commands(
    migrated: asyncpg.Connection, capsys: pytest.CaptureFixture[str]
) -> None:
    """`zapflow projections rebuild NAME`, `versions` and `drop-old`, on an empty log."""
    code, out, err = await _cli(capsys, "rebuild", "conversations")
    assert code == 0, err
    assert (out["version"], out["schema"], out["replaced"]) == (2, "conversations_v2", 1)
    code, out, _ = await _cli(capsys, "versions")
    assert [(v["version"], v["state"]) for v in out] == [(1, "retired"), (2, "active")]
    code, out, _ = await _cli(capsys, "drop-old", "conversations")
    assert (code, out) == (0, {"dropped": [
        {"projection": "conversations", "version": 1, "schema": "public", "state": "dropped"}
    ]})  # fmt: skip
    code, out, err = await _cli(capsys, "rebuild", "contacts")
    assert (code, out) == (2, None)
    assert "unknown projection 'contacts'; versioned projections: conversations" in err
    await migrated.execute("DROP TABLE projection_versions")
    code, out, err = await _cli(capsys, "versions")
    assert (code, out) == (1, None)
    assert "run `zapflow setup`" in err
