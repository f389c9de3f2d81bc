"""The platform admin API for real: the decider, the projector and the API on the real broker
and PostgreSQL.

A tenant registered through the API can use its key at once; a retried registration is one
tenant; suspension and reactivation reach the directory; the decider's refusals come back as
409 with their reason. Only the platform admin token opens these routes; bad input is a 400
with nothing on the log; the Twilio auth token appears in no response, no record of the log
(only sealed, `v1.`) and no log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import pytest
from aiokafka import TopicPartition
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.tokens import derived_admin_token
from events.envelope import decode_command
from projections.credentials import encrypt_secret
from projections.migrations import migrate
from streams import kafka
from streams.topics import COMMANDS, EVENTS
from tests.integration.test_query_api import Keyed, _until
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_registration_saga import events
from tests.integration.twilio_driver import KEY, PARTITIONS, Reply, app_client

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": f"Bearer {derived_admin_token(KEY)}"}
ACCOUNT = "AC" + "0123456789abcdef" * 2
SENDER = "whatsapp:+14155238886"
type Platform = tuple[TestClient, Keyed, Keyed]


async def call(client: TestClient, method: str, path: str, **kwargs: Any) -> Reply:
    """In a thread: the decider and projector run on this test's event loop meanwhile."""
    headers = kwargs.pop("headers", ADMIN)
    return await asyncio.to_thread(client.request, method, path, headers=headers, **kwargs)


def new_tenant(token: str, name: str = "Clínica Nova") -> dict[str, Any]:
    return {"name": name, "twilio_account_sid": ACCOUNT, "twilio_auth_token": token,
            "senders": [SENDER, "+5511987650000"]}  # fmt: skip


async def records(brokers: str, topic: str) -> list[bytes]:
    """Every record's value on `topic`, raw (read to the end of every partition)."""
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, n) for n in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[bytes] = []
        while batches := await consumer.getmany(timeout_ms=1000):
            found += [r.value for rs in batches.values() for r in rs if r.value is not None]
        return found
    finally:
        await consumer.stop()


async def test_a_registered_tenant_uses_its_key_at_once_and_a_retry_is_the_same_tenant(
    platform: Platform, fresh_broker: str, db: asyncpg.Connection
) -> None:
    client = platform[0]
    once = {**ADMIN, "Idempotency-Key": "register-clinica-nova"}
    body = new_tenant("tok-" + secrets.token_hex(16))
    first = await call(client, "POST", "/v1/admin/tenants", json=body, headers=once)
    assert first.status_code == 201, first.text
    made = first.json()
    assert made["status"] == "accepted"
    tenant_id = uuid.UUID(made["tenant_id"])
    key = {"Authorization": f"Bearer {made['api_key']}"}
    conversations = await call(client, "GET", "/v1/conversations", headers=key)
    assert (conversations.status_code, conversations.json()["items"]) == (200, [])

    again = await call(client, "POST", "/v1/admin/tenants", json=body, headers=once)
    assert (again.status_code, again.json()) == (201, made)  # same id, same key, one tenant
    other = await call(client, "POST", "/v1/admin/tenants", headers=once,
                       json={**body, "name": "Outra"})  # fmt: skip
    assert other.status_code == 409, other.text
    assert other.json()["error"] == "idempotency_key_reused"
    unwaited = await call(client, "POST", "/v1/admin/tenants?wait=false", headers=once,
                          json={**body, "name": "Outra"})  # fmt: skip
    assert unwaited.status_code == 202, unwaited.text
    assert unwaited.json()["api_key"] != made["api_key"]  # never the existing tenant's key
    refused = {"Authorization": f"Bearer {unwaited.json()['api_key']}"}
    assert (await call(client, "GET", "/v1/conversations", headers=refused)).status_code == 401

    registered = [e for e in await events(fresh_broker) if e.type == "TenantRegistered"]
    assert [e.tenant_id for e in registered].count(tenant_id) == 1
    assert await db.fetchval("SELECT count(*) FROM tenants") == 3  # A, B and this one
    shown = await call(client, "GET", f"/v1/admin/tenants/{tenant_id}")
    assert shown.json() == {
        "tenant_id": str(tenant_id), "name": "Clínica Nova", "twilio_account_sid": ACCOUNT,
        "senders": sorted(body["senders"]), "suspended": False,
        "registered_at": shown.json()["registered_at"],
    }  # fmt: skip
    listed = [(await call(client, "GET", "/v1/admin/tenants", params={"limit": 1})).json()]
    while listed[-1]["next_cursor"] is not None:
        params = {"limit": 1, "cursor": listed[-1]["next_cursor"]}
        listed.append((await call(client, "GET", "/v1/admin/tenants", params=params)).json())
    assert [len(page["items"]) for page in listed] == [1, 1, 1]
    assert str(tenant_id) in {t["tenant_id"] for page in listed for t in page["items"]}


async def test_without_an_idempotency_key_each_registration_is_a_tenant_of_its_own(
    platform: Platform, db: asyncpg.Connection
) -> None:
    client = platform[0]
    body = new_tenant("tok-" + secrets.token_hex(16))
    made = [(await call(client, "POST", "/v1/admin/tenants", json=body)).json()
            for _ in range(2)]  # fmt: skip
    assert made[0]["tenant_id"] != made[1]["tenant_id"]
    assert made[0]["api_key"] != made[1]["api_key"]
    assert await db.fetchval("SELECT count(*) FROM tenants") == 4


async def test_suspension_and_reactivation_reach_the_directory(platform: Platform) -> None:
    client, a, _ = platform
    path = f"/v1/admin/tenants/{a.tenant.tenant_id}"
    once = {**ADMIN, "Idempotency-Key": "suspend-1"}
    sent = await call(client, "POST", f"{path}/suspend", json={"reason": "unpaid"}, headers=once)
    assert sent.status_code == 202, sent.text
    assert sent.json()["status"] == "pending"
    again = await call(client, "POST", f"{path}/suspend", json={"reason": "unpaid"}, headers=once)
    assert again.json()["command_id"] == sent.json()["command_id"]
    shown = await _until(lambda: client.get(path, headers=ADMIN).json(), lambda t: t["suspended"])
    assert shown["suspended"] is True
    waited = await call(client, "POST", f"{path}/reactivate", params={"wait": "true"})
    assert (waited.status_code, waited.json()["status"]) == (200, "accepted")
    assert (await call(client, "GET", path)).json()["suspended"] is False
    # Already active: the decider records nothing, and the directory says it is so.
    twice = await call(client, "POST", f"{path}/reactivate", params={"wait": "true"})
    assert twice.status_code == 200


async def test_the_deciders_refusals_answer_409_with_the_reason(platform: Platform) -> None:
    client, a, _ = platform
    senders = f"/v1/admin/tenants/{a.tenant.tenant_id}/senders"
    wait = {"wait": "true", "timeout": "20"}
    last = await call(client, "DELETE", f"{senders}/{a.tenant.sender}", params=wait)
    assert (last.status_code, last.json()["error"]) == (409, "last_sender"), last.text
    unknown = await call(client, "DELETE", f"{senders}/%2B5511900000000", params=wait)
    assert (unknown.status_code, unknown.json()["error"]) == (409, "unknown_sender")
    added = await call(client, "POST", senders, json={"sender": "+5511900000001"}, params=wait)
    assert (added.status_code, added.json()["status"]) == (200, "accepted")
    renamed = await call(client, "PATCH", f"/v1/admin/tenants/{a.tenant.tenant_id}",
                         json={"name": "Renomeada"}, params=wait)  # fmt: skip
    assert (renamed.status_code, renamed.json()["status"]) == (200, "accepted")


async def test_name_senders_and_credentials_reach_the_directory(platform: Platform) -> None:
    client, a, _ = platform
    path, wait = f"/v1/admin/tenants/{a.tenant.tenant_id}", {"wait": "true"}
    await call(client, "PATCH", path, json={"name": "Renomeada"}, params=wait)
    await call(client, "POST", f"{path}/senders", json={"sender": "+5511900000001"}, params=wait)
    await call(client, "PUT", f"{path}/twilio-credentials", params=wait,
               json={"twilio_account_sid": ACCOUNT, "twilio_auth_token": "tok-new"})  # fmt: skip
    shown = await _until(lambda: client.get(path, headers=ADMIN).json(),
                         lambda t: t["twilio_account_sid"] == ACCOUNT)  # fmt: skip
    assert shown["name"] == "Renomeada"
    assert set(shown["senders"]) == {a.tenant.sender, "+5511900000001"}
    assert shown["twilio_account_sid"] == ACCOUNT


async def test_the_auth_token_is_in_no_response_no_record_and_no_log_line(
    platform: Platform, fresh_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = platform[0]
    created_token, rotated_token = "tok-" + secrets.token_hex(16), "rot-" + secrets.token_hex(16)
    replies = [await call(client, "POST", "/v1/admin/tenants", json=new_tenant(created_token))]
    tenant_id = replies[0].json()["tenant_id"]
    path = f"/v1/admin/tenants/{tenant_id}"
    credentials = {"twilio_account_sid": ACCOUNT, "twilio_auth_token": rotated_token}
    replies += [
        await call(client, "PUT", f"{path}/twilio-credentials", json=credentials,
                   params={"wait": "true"}),
        await call(client, "PUT", f"{path}/twilio-credentials",
                   json={**credentials, "twilio_account_sid": "AC1"}),
        await call(client, "PUT", f"{path}/twilio-credentials",
                   json={**credentials, "twilio_auth_token": f" {rotated_token}"}),
        await call(client, "POST", "/v1/admin/tenants",
                   json={**new_tenant(created_token), "senders": ["nope"]}),
        await call(client, "GET", path),
        await call(client, "GET", "/v1/admin/tenants"),
    ]  # fmt: skip
    assert [r.status_code for r in replies] == [201, 200, 400, 400, 400, 200, 200]
    sealed = [e.payload for e in await events(fresh_broker)
              if e.type in ("TenantRegistered", "TwilioCredentialsRotated")
              and str(e.tenant_id) == tenant_id]  # fmt: skip
    assert [p["twilio_auth_token_encrypted"][:3] for p in sealed] == ["v1.", "v1."]
    logged = await records(fresh_broker, COMMANDS) + await records(fresh_broker, EVENTS)
    assert sum(b'"v1.' in r for r in logged) >= 4  # both commands and both events were read
    for token in (created_token, rotated_token):
        assert not [r for r in replies if token in r.text]
        assert not [r for r in logged if token.encode() in r]
        assert token not in caplog.text
    assert "api_key_sha256" not in replies[-1].text
    assert hashlib.sha256(replies[0].json()["api_key"].encode()).hexdigest() not in replies[-2].text


@dataclass(frozen=True, slots=True)
class Quiet:
    """The API with one tenant in the directory and no decider: nothing gets decided."""

    client: TestClient
    tenant_id: uuid.UUID
    tenant_key: str
    brokers: str
    db: asyncpg.Connection


@pytest.fixture
async def quiet(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> AsyncIterator[Quiet]:
    await migrate(db)
    tenant, key = uuid.uuid4(), "zf_" + secrets.token_urlsafe(24)
    await db.execute(
        "INSERT INTO tenants (tenant_id, name, twilio_account_sid, twilio_auth_token_encrypted, "
        "api_key_sha256, registered_at, updated_seq) VALUES ($1, 'Quieta', $2, $3, $4, now(), 1)",
        tenant, ACCOUNT, encrypt_secret(KEY, "token", tenant),
        hashlib.sha256(key.encode()).hexdigest(),
    )  # fmt: skip
    await db.execute("INSERT INTO tenant_senders VALUES ($1, $2)", tenant, SENDER)
    with app_client(fresh_broker, database_url) as client:
        yield Quiet(client, tenant, key, fresh_broker, db)


async def nothing_else_was_sent(quiet: Quiet) -> None:
    """One valid command now, and it alone is on the log (so the reader does see commands)."""
    reply = quiet.client.post(f"/v1/admin/tenants/{quiet.tenant_id}/reactivate", headers=ADMIN)
    assert reply.status_code == 202, reply.text
    (only,) = await records(quiet.brokers, COMMANDS)
    assert decode_command(only).type == "ReactivateTenant"
    assert await quiet.db.fetchval("SELECT count(*) FROM command_spool") == 0


def admin_routes(tenant: uuid.UUID | str) -> list[tuple[str, str, dict[str, Any] | None]]:
    path = f"/v1/admin/tenants/{tenant}"
    return [
        ("POST", "/v1/admin/tenants", new_tenant("tok")),
        ("GET", "/v1/admin/tenants", None),
        ("GET", path, None),
        ("PATCH", path, {"name": "x"}),
        ("POST", f"{path}/senders", {"sender": "+5511900000001"}),
        ("DELETE", f"{path}/senders/{SENDER}", None),
        ("PUT", f"{path}/twilio-credentials",
         {"twilio_account_sid": ACCOUNT, "twilio_auth_token": "t"}),
        ("POST", f"{path}/suspend", {"reason": "r"}),
        ("POST", f"{path}/reactivate", None),
    ]  # fmt: skip


async def test_only_the_platform_admin_token_opens_any_admin_route(quiet: Quiet) -> None:
    routes = admin_routes(quiet.tenant_id)
    documented = {
        (method.upper(), path)
        for path, item in cast(FastAPI, quiet.client.app).openapi()["paths"].items()
        if path.startswith("/v1/admin/")
        for method in item
    }
    templated = {(m, p.replace(str(quiet.tenant_id), "{tenant_id}")
                  .replace(SENDER, "{sender}")) for m, p, _ in routes}  # fmt: skip
    assert templated == documented  # every admin route is tried below
    tenant_key = {"Authorization": f"Bearer {quiet.tenant_key}"}
    assert quiet.client.get("/v1/conversations", headers=tenant_key).status_code == 200
    refused: list[dict[str, str]] = [
        {},
        tenant_key,
        {"Authorization": "Bearer zfadmin_" + secrets.token_urlsafe(32)},
        {"Authorization": f"Bearer {derived_admin_token(bytes(32))}"},  # another deployment's
        {"Authorization": f"Basic {derived_admin_token(KEY)}"},
    ]
    for method, path, body in routes:
        for headers in refused:
            reply = quiet.client.request(method, path, json=body, headers=headers)
            assert reply.status_code == 401, (method, path, headers, reply.text)
            assert reply.headers["www-authenticate"] == "Bearer"
            assert reply.json()["error"] == "unauthorized"
    await nothing_else_was_sent(quiet)


async def test_bad_input_is_a_400_and_nothing_reaches_the_log(quiet: Quiet) -> None:
    path = f"/v1/admin/tenants/{quiet.tenant_id}"
    good = new_tenant("tok")
    bad: list[tuple[str, str, dict[str, Any] | None]] = [
        ("POST", "/v1/admin/tenants", {**good, "name": "  "}),
        ("POST", "/v1/admin/tenants", {**good, "twilio_account_sid": "AC123"}),
        ("POST", "/v1/admin/tenants", {**good, "twilio_auth_token": ""}),
        ("POST", "/v1/admin/tenants", {**good, "senders": []}),
        ("POST", "/v1/admin/tenants", {**good, "senders": ["sms:+14155238886"]}),
        ("POST", "/v1/admin/tenants", {**good, "name": "a\x00b"}),
        ("POST", "/v1/admin/tenants", {**good, "extra": 1}),
        ("POST", "/v1/admin/tenants", {"name": "x"}),
        ("PATCH", path, {"name": ""}),
        ("PATCH", path, {"name": "x" * 201}),
        ("POST", f"{path}/senders", {"sender": "14155238886"}),
        ("DELETE", f"{path}/senders/whatsapp:+0123", None),
        ("PUT", f"{path}/twilio-credentials", {"twilio_account_sid": ACCOUNT,
                                              "twilio_auth_token": " spaced "}),
        ("PUT", f"{path}/twilio-credentials", {"twilio_account_sid": "XX",
                                              "twilio_auth_token": "t"}),
        ("POST", f"{path}/suspend", {"reason": ""}),
        ("POST", f"{path}/suspend", {}),
        ("GET", "/v1/admin/tenants?cursor=not-ours", None),
        ("GET", "/v1/admin/tenants?limit=0", None),
    ]  # fmt: skip
    for method, target, body in bad:
        reply = quiet.client.request(method, target, json=body, headers=ADMIN)
        assert reply.status_code == 400, (method, target, body, reply.text)
        assert set(reply.json()) == {"error", "detail"}
        assert "spaced" not in reply.text
    await nothing_else_was_sent(quiet)


async def test_an_unknown_tenant_is_a_404_and_nothing_reaches_the_log(quiet: Quiet) -> None:
    for tenant in (uuid.uuid4(), "not-a-tenant-id"):
        for method, path, body in admin_routes(tenant)[2:]:
            reply = quiet.client.request(method, path, json=body, headers=ADMIN)
            assert reply.status_code == 404, (method, path, reply.text)
            assert reply.json() == {"error": "not_found", "detail": "no such tenant"}
    await nothing_else_was_sent(quiet)
