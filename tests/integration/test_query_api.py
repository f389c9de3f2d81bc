"""Read side end to end: signed webhooks → decider → projector → query API, for two tenants.

Real broker, real PostgreSQL, the real decider and projector; the API answers from the read
models as role `zapflow_app`, and tenant A's key never reaches tenant B's data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest
from fastapi.testclient import TestClient

from commands.tenant import RegisterTenant
from events.envelope import CommandEnvelope, encode_command
from projections.credentials import encrypt_secret
from projections.migrations import migrate
from projections.runner import run_projector
from streams import kafka
from streams.decider import run_decider
from streams.topics import COMMANDS
from tests.integration.test_decider import command
from tests.integration.twilio_driver import KEY, Tenant, app_client, inbound, post, sid

pytestmark = pytest.mark.integration
TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Keyed:
    tenant: Tenant
    api_key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def _registration(keyed: Keyed) -> CommandEnvelope:
    t = keyed.tenant
    return command(
        t.tenant_id,
        RegisterTenant(
            name=f"tenant {str(t.tenant_id)[:8]}",
            twilio_account_sid=t.account_sid,
            twilio_auth_token_encrypted=encrypt_secret(KEY, t.token, t.tenant_id),
            senders=[t.sender],
            api_key_sha256=hashlib.sha256(keyed.api_key.encode()).hexdigest(),
        ),
    )


def _keyed() -> Keyed:
    tenant = Tenant(
        uuid.uuid4(), "AC" + uuid.uuid4().hex, uuid.uuid4().hex, "whatsapp:+14155238886"
    )
    return Keyed(tenant, "zk_" + secrets.token_urlsafe(24))


async def _until[T](probe: Callable[[], T], done: Callable[[T], bool]) -> T:
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        value = await asyncio.to_thread(probe)
        if done(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.3)


@pytest.fixture
async def platform(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> AsyncIterator[tuple[TestClient, Keyed, Keyed]]:
    """Decider and projector running; tenants A and B registered through the log."""
    await migrate(db)
    a, b = _keyed(), _keyed()
    producer = kafka.producer(fresh_broker)
    await producer.start()
    try:
        for keyed in (a, b):
            key, value, headers = encode_command(_registration(keyed))
            await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)
    finally:
        await producer.stop()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_decider(fresh_broker, stop, session_timeout_ms=6000)),
        asyncio.create_task(run_projector(fresh_broker, database_url, stop)),
    ]
    try:
        for keyed in (a, b):
            for _ in range(int(TIMEOUT_S / 0.3)):
                if await db.fetchval(
                    "SELECT 1 FROM tenants WHERE tenant_id = $1", keyed.tenant.tenant_id
                ):
                    break
                await asyncio.sleep(0.3)
        with app_client(fresh_broker, database_url) as client:
            yield client, a, b
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def _get(client: TestClient, path: str, keyed: Keyed | None, **params: Any) -> Any:
    headers = keyed.auth if keyed is not None else {}
    return client.get(path, headers=headers, params=params)


async def test_webhooks_become_conversations_that_only_their_tenant_sees(
    platform: tuple[TestClient, Keyed, Keyed],
) -> None:
    client, a, b = platform
    for keyed, bodies in (
        (a, ["Quero marcar uma consulta", "amanhã de manhã"]),
        (b, ["segredo de B"]),
    ):
        for body in bodies:
            reply = post(client, keyed.tenant, {**inbound(keyed.tenant, sid()), "Body": body})
            assert reply.status_code == 200

    def conversations(keyed: Keyed) -> Any:
        return _get(client, "/v1/conversations", keyed).json()

    page_a = await _until(
        lambda: conversations(a), lambda p: p["items"] and p["items"][0]["unread_count"] == 2
    )
    page_b = await _until(lambda: conversations(b), lambda p: bool(p["items"]))
    (conv_a,) = page_a["items"]
    (conv_b,) = page_b["items"]
    assert (conv_a["state"], conv_a["last_message_preview"]) == ("bot", "amanhã de manhã")
    assert conv_a["window_open_until"] is not None
    assert page_a["next_cursor"] is None

    messages = _get(client, f"/v1/conversations/{conv_a['conversation_id']}/messages", a).json()
    assert [m["body"] for m in messages["items"]] == [
        "Quero marcar uma consulta",
        "amanhã de manhã",
    ]
    assert {m["direction"] for m in messages["items"]} == {"inbound"}
    first = _get(
        client, f"/v1/conversations/{conv_a['conversation_id']}/messages", a, limit=1
    ).json()
    assert [m["body"] for m in first["items"]] == ["Quero marcar uma consulta"]
    path = f"/v1/conversations/{conv_a['conversation_id']}/messages"
    rest = _get(client, path, a, limit=1, cursor=first["next_cursor"]).json()
    assert [m["body"] for m in rest["items"]] == ["amanhã de manhã"]
    assert rest["next_cursor"] is None

    assert _get(client, "/v1/conversations", a, q="consulta").json()["items"] == [conv_a]
    assert _get(client, "/v1/conversations", a, q="segredo").json()["items"] == []
    assert _get(client, "/v1/conversations", a, state="human").json()["items"] == []

    # Tenant A's key on B's conversation: exactly like a conversation that does not exist.
    for path in (f"/v1/conversations/{conv_b['conversation_id']}",
                 f"/v1/conversations/{conv_b['conversation_id']}/messages",
                 f"/v1/conversations/{uuid.uuid4()}", "/v1/conversations/not-an-id"):  # fmt: skip
        reply = _get(client, path, a)
        assert reply.status_code == 404, path
        assert reply.json() == {"error": "not_found", "detail": "no such conversation"}
        assert "segredo" not in reply.text
    assert "segredo" not in _get(client, "/v1/conversations", a).text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer zk_not-a-key"},
    ],
)
async def test_a_missing_or_unknown_key_is_401(
    platform: tuple[TestClient, Keyed, Keyed], headers: dict[str, str]
) -> None:
    client = platform[0]
    for path in ("/v1/conversations", f"/v1/conversations/{uuid.uuid4()}",
                 f"/v1/conversations/{uuid.uuid4()}/messages"):  # fmt: skip
        reply = client.get(path, headers=headers)
        assert reply.status_code == 401, path
        assert reply.headers["www-authenticate"] == "Bearer"
        assert reply.json()["error"] == "unauthorized"


async def test_bad_parameters_are_400(platform: tuple[TestClient, Keyed, Keyed]) -> None:
    client, a, _ = platform
    forged = [
        base64.urlsafe_b64encode(orjson.dumps(v)).decode()
        for v in (
            ["2026-01-01T00:00:00+00:00", 5],
            [1, 2],
            ["2026-01-01T00:00:00", str(uuid.uuid4())],
        )
    ]
    bad: list[dict[str, Any]] = [
        {"cursor": "!!"}, {"cursor": "WzFd"}, {"limit": 0}, {"limit": 1000},
        {"contact": "\x00"}, {"q": "a\x00"}, *({"cursor": c} for c in forged),
        {"state": "nope"}, {"updated_since": "yesterday"}, {"updated_since": "0.5"},
    ]  # fmt: skip
    for params in bad:
        reply = _get(client, "/v1/conversations", a, **params)
        assert reply.status_code == 400, params
        assert set(reply.json()) == {"error", "detail"}


async def test_operator_commands_go_through_the_decider(
    platform: tuple[TestClient, Keyed, Keyed],
) -> None:
    client, a, b = platform
    for keyed in (a, b):
        assert post(client, keyed.tenant, inbound(keyed.tenant, sid())).status_code == 200
    conv_a = (await _until(lambda: _get(client, "/v1/conversations", a).json(),
                           lambda p: bool(p["items"])))["items"][0]  # fmt: skip
    conv_b = (await _until(lambda: _get(client, "/v1/conversations", b).json(),
                           lambda p: bool(p["items"])))["items"][0]  # fmt: skip
    base = f"/v1/conversations/{conv_a['conversation_id']}"

    async def act(action: str, body: dict[str, Any], key: str | None = None, **params: Any) -> Any:
        # In a thread: the test client blocks its caller, and the caller's loop runs the decider
        # and the projector that `?wait=true` is waiting for.
        headers = a.auth | ({"Idempotency-Key": key} if key else {})
        return await asyncio.to_thread(
            client.post, base + action, json=body, headers=headers, params=params
        )

    taken = await act("/handoff", {"operator": "maria@clinica"}, "k1", wait="true")
    assert taken.status_code == 200, taken.text
    again = await act("/handoff", {"operator": "maria@clinica"}, "k1", wait="true")
    assert again.json() == taken.json()  # the same command, decided once
    conversation = _get(client, base, a).json()
    assert (conversation["state"], conversation["owner"]) == ("human", "maria@clinica")

    replied = await act("/messages", {"body": "Olá, aqui é a Maria"}, "r1", wait="true")
    assert replied.status_code == 200, replied.text
    sent = _get(client, base + "/messages", a).json()["items"]
    assert [(m["direction"], m["author"]) for m in sent] == [
        ("inbound", "contact"),
        ("outbound", "human"),
    ]

    assert (
        await act("/return-to-bot", {"operator": "maria@clinica"}, wait="true")
    ).status_code == 200
    refused = await act("/return-to-bot", {"operator": "maria@clinica"}, wait="true")
    assert refused.status_code == 409
    assert refused.json()["error"] == "invalid_state_bot"
    pending = await act("/close", {"closed_by": "maria@clinica"})
    assert pending.status_code == 202
    assert pending.json()["status"] == "pending"
    closed = await _until(lambda: _get(client, base, a).json(), lambda c: c["state"] == "closed")
    assert closed["state"] == "closed"

    assert (await act("/messages", {}, wait="true")).status_code == 400  # nothing to send
    assert (await act("/messages", {"body": "a\x00b"})).status_code == 400  # unstorable
    too_big = base64.urlsafe_b64encode(orjson.dumps([2**63])).decode()
    assert _get(client, base + "/messages", a, cursor=too_big).status_code == 400
    today = datetime.now(UTC).date().isoformat()
    (day,) = _get(client, "/v1/metrics", a, **{"from": today, "to": today}).json()["days"]
    assert (day["inbound"], day["outbound_human"], day["handoffs"], day["closed"]) == (1, 1, 1, 1)
    assert day["median_first_response_seconds"] >= 0
    (other,) = _get(client, "/v1/metrics", b, **{"from": today, "to": today}).json()["days"]
    assert (other["inbound"], other["handoffs"]) == (1, 0)  # B's own day, none of A's
    assert _get(client, "/v1/metrics", a, **{"from": today, "to": "2000-01-01"}).status_code == 400
    other = f"/v1/conversations/{conv_b['conversation_id']}/handoff"
    assert client.post(other, json={}, headers=a.auth).status_code == 404
    assert client.post(base + "/handoff", json={}).status_code == 401
    assert (
        _get(client, f"/v1/conversations/{conv_b['conversation_id']}", b).json()["state"] == "bot"
    )


async def test_every_v1_route_refuses_a_request_without_a_key(
    platform: tuple[TestClient, Keyed, Keyed],
) -> None:
    """Over every documented operation, so a new endpoint without authentication fails here."""
    client = platform[0]
    paths = client.get("/openapi.json").json()["paths"]
    protected = {  # the session routes take their credential in the body (test_auth)
        p: ops
        for p, ops in paths.items()
        if p.startswith("/v1/") and "/twilio/" not in p and not p.startswith("/v1/auth/")
    }
    assert len(protected) >= 6
    for template, operations in protected.items():
        path = template.replace("{conversation_id}", str(uuid.uuid4()))
        for method in operations:
            for headers in ({}, {"Authorization": "Bearer zk_revoked-or-unknown"}):
                reply = client.request(method.upper(), path, headers=headers, json={})
                assert reply.status_code == 401, (method, path)
