"""The tenant's people and API keys through the API, for real: the decider, the projector and
the registration runner on the real broker and PostgreSQL, the app with no auth cache.

A scoped key authenticates with exactly its scopes, records its last use and stops at once when
revoked; keys and tokens appear once in an answer and never in the log, only their SHA-256;
another tenant's ids are unknown; an invited user completes registration and is managed; bad
input is a 400 that issues nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import SCOPED_KEY
from api.container import ApiConfig
from api.tokens import TokenKeys, issue
from commands.tenant_lifecycle import SuspendTenant
from projections.migrations import migrate
from projections.runner import run_projector
from streams import kafka
from streams.decider import run_decider
from streams.registrations import RegistrationOptions, run_registrations
from streams.topics import COMMANDS, EVENTS
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import TIMEOUT_S, Keyed, _keyed, _registration
from tests.integration.test_registration_saga import produce
from tests.integration.twilio_driver import KEY, PUBLIC

pytestmark = pytest.mark.integration
type People = tuple[TestClient, Keyed, Keyed]


@pytest.fixture
async def people(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> AsyncIterator[People]:
    """Tenants A and B registered through the log; decider, projector and registration runner
    running; the API trusts no cached credential (`auth_cache_ttl_s=0`)."""
    await migrate(db)
    a, b = _keyed(), _keyed()
    await produce(fresh_broker, *(_registration(k) for k in (a, b)))
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_decider(fresh_broker, stop, session_timeout_ms=6000)),
        asyncio.create_task(run_projector(fresh_broker, database_url, stop)),
        asyncio.create_task(run_registrations(fresh_broker, stop, RegistrationOptions(10.0, 2))),
    ]
    config = ApiConfig(database_url, fresh_broker, PUBLIC, secret_key=KEY,
                       produce_timeout_s=1.0, auth_cache_ttl_s=0)  # fmt: skip
    try:
        for keyed in (a, b):
            await _until(lambda k=keyed: _tenant_known(db, k))
        with TestClient(create_app(config)) as client:
            yield client, a, b
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _tenant_known(db: asyncpg.Connection, keyed: Keyed) -> bool:
    found = await db.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1", keyed.tenant.tenant_id)
    return bool(found)


async def _until(check: Any) -> Any:
    """Poll the async `check` until it is truthy (or the timeout); its last value."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.2)


def bearer(credential: str | Keyed) -> dict[str, str]:
    secret = credential.api_key if isinstance(credential, Keyed) else credential
    return {"Authorization": f"Bearer {secret}"}


async def call(
    client: TestClient, method: str, path: str, who: str | Keyed, headers: Any = None, **kw: Any
) -> Any:
    """A request off the event loop: the decider and projector run on it while the API waits."""
    headers = bearer(who) | (headers or {})
    return await asyncio.to_thread(client.request, method, path, headers=headers, **kw)


async def log_bytes(brokers: str) -> bytes:
    """Every record value on `zapflow.commands` and `zapflow.events`, raw."""
    values: list[bytes] = []
    for topic in (COMMANDS, EVENTS):
        consumer = kafka.groupless_consumer(brokers)
        await consumer.start()
        try:
            values += await _values(consumer, topic)
        finally:
            await consumer.stop()
    return b"\n".join(values)


async def _values(consumer: AIOKafkaConsumer, topic: str) -> list[bytes]:
    """As `streams.log.read_partitions`, but the raw bytes of every record."""
    await consumer._client.force_metadata_update()  # aiokafka has no public refresh
    assigned = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    assert assigned, topic
    consumer.assign(assigned)
    await consumer.seek_to_beginning(*assigned)
    listed = await consumer.end_offsets(assigned)
    remaining = {tp for tp in assigned if listed[tp] > 0}
    ends: dict[TopicPartition, int] = {}
    values: list[bytes] = []
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=5000)
        assert batch, f"{topic}: {len(remaining)} partitions unread"
        for tp, records in batch.items():
            end = ends.setdefault(tp, consumer.highwater(tp))
            values += [r.value for r in records if r.offset < end and r.value]
            if records and records[-1].offset >= end - 1:
                remaining.discard(tp)
    return values


def sha(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).hexdigest().encode()


async def listed_keys(client: TestClient, who: Keyed) -> dict[str, Any]:
    reply = await call(client, "GET", "/v1/api-keys", who)
    assert reply.status_code == 200, reply.text
    return {k["key_id"]: k for k in reply.json()["items"]}


async def test_a_scoped_key_has_exactly_its_scopes_until_it_is_revoked(
    people: People, fresh_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client, a, _ = people
    tenant = a.tenant.tenant_id
    made = await call(client, "POST", "/v1/api-keys", a, json={"name": "CRM", "scopes": ["read"]})
    assert made.status_code == 201, made.text
    created = made.json()
    secret, key_id = created["key"], created["key_id"]
    assert (created["status"], created["scopes"], created["name"]) == ("accepted", ["read"], "CRM")
    scoped = SCOPED_KEY.match(secret)
    assert scoped is not None
    assert scoped.group(1) == tenant.hex

    me = (await call(client, "GET", "/v1/me", secret)).json()
    assert me == {"tenant_id": str(tenant), "kind": "api_key", "subject": key_id,
                  "role": None, "permissions": ["read"]}  # fmt: skip
    assert (await call(client, "GET", "/v1/conversations", secret)).status_code == 200
    handoff = f"/v1/conversations/{uuid.uuid4()}/handoff"
    refused = await call(client, "POST", handoff, secret, json={})
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    assert (await call(client, "GET", "/v1/api-keys", secret)).status_code == 403
    assert (await call(client, "GET", "/v1/users", secret)).status_code == 403

    # A key with `operate` gets past the permission to the route itself (an unknown id: 404).
    made = await call(client, "POST", "/v1/api-keys", a,
                      json={"name": "bot", "scopes": ["read", "operate"]})  # fmt: skip
    operate_key = made.json()["key"]
    assert (await call(client, "POST", handoff, operate_key, json={})).status_code == 404

    listing = await listed_keys(client, a)
    assert set(listing) == {key_id, made.json()["key_id"]}
    assert (listing[key_id]["scopes"], listing[key_id]["revoked_at"]) == (["read"], None)
    assert listing[key_id]["last_used_at"] is not None  # used above
    everything = (await call(client, "GET", "/v1/api-keys", a)).text
    assert secret not in everything
    assert operate_key not in everything
    assert sha(secret).decode() not in everything  # nor its hash

    revoked = await call(client, "DELETE", f"/v1/api-keys/{key_id}", a)
    assert (revoked.status_code, revoked.json()["status"]) == (200, "accepted"), revoked.text
    gone = await call(client, "GET", "/v1/me", secret)
    assert (gone.status_code, gone.json()["error"]) == (401, "unauthorized")
    assert (await call(client, "GET", "/v1/conversations", secret)).status_code == 401
    assert (await listed_keys(client, a))[key_id]["revoked_at"] is not None
    again = await call(client, "DELETE", f"/v1/api-keys/{key_id}", a)
    assert again.status_code == 200, again.text  # already revoked: so it stays
    assert (await call(client, "GET", "/v1/me", operate_key)).status_code == 200

    log = await log_bytes(fresh_broker)
    for key in (secret, operate_key):
        assert key.encode() not in log
        assert log.count(sha(key)) >= 2  # the command and its event
    assert secret not in caplog.text
    assert operate_key not in caplog.text


async def test_another_tenants_key_is_unknown_here_and_never_acts_for_this_tenant(
    people: People, fresh_broker: str, db: asyncpg.Connection
) -> None:
    client, a, b = people
    made = await call(client, "POST", "/v1/api-keys", b,
                      json={"name": "B's", "scopes": ["read", "operate", "admin"]})  # fmt: skip
    assert made.status_code == 201, made.text
    b_key, b_key_id = made.json()["key"], made.json()["key_id"]
    for path in (f"/v1/api-keys/{b_key_id}", f"/v1/api-keys/{uuid.uuid4()}", "/v1/api-keys/x"):
        reply = await call(client, "DELETE", path, a)
        assert (reply.status_code, reply.json()) == (
            404, {"error": "not_found", "detail": "no such API key"}), path  # fmt: skip
    assert b_key_id not in await listed_keys(client, a)
    me = (await call(client, "GET", "/v1/me", b_key)).json()
    assert me["tenant_id"] == str(b.tenant.tenant_id)
    # B's secret under A's tenant prefix: looked up in A's rows, where it is not.
    forged = re.sub(r"^zf_[0-9a-f]{32}_", f"zf_{a.tenant.tenant_id.hex}_", b_key)
    assert (await call(client, "GET", "/v1/me", forged)).status_code == 401
    assert (await listed_keys(client, b))[b_key_id]["revoked_at"] is None

    # A suspended tenant grants nothing: the decider refuses the key, which never works.
    await produce(fresh_broker, command_envelope(b.tenant.tenant_id, SuspendTenant(reason="x")))

    async def suspended() -> bool:
        sql = "SELECT suspended FROM tenants WHERE tenant_id = $1"
        return bool(await db.fetchval(sql, b.tenant.tenant_id))

    assert await _until(suspended)
    refused = await call(client, "POST", "/v1/api-keys", b, json={"name": "n", "scopes": ["read"]})
    assert (refused.status_code, refused.json()["error"]) == (409, "tenant_suspended")
    assert "key" not in refused.json()  # never shown: it was never a key
    assert set(await listed_keys(client, b)) == {b_key_id}


async def registration_of(client: TestClient, who: Keyed, location: str) -> Any:
    async def over() -> Any:
        found = (await call(client, "GET", location, who)).json()
        return found if found.get("status") in ("completed", "failed") else None

    return await _until(over)


async def members(client: TestClient, who: Keyed | str) -> dict[str, Any]:
    reply = await call(client, "GET", "/v1/users", who)
    assert reply.status_code == 200, reply.text
    return {m["email"]: m for m in reply.json()["items"]}


async def test_an_invited_user_becomes_a_member_whom_admins_manage(
    people: People, fresh_broker: str
) -> None:
    client, a, b = people
    tenant = a.tenant.tenant_id
    invites = {}
    for email, role in (("Ana@Example.com ", "operator"), ("olga@example.com", "owner")):
        reply = await call(client, "POST", "/v1/users", a, json={"email": email, "role": role})
        assert reply.status_code == 202, reply.text
        invites[role] = reply.json() | {"location": reply.headers["location"]}
    ana, olga = invites["operator"], invites["owner"]
    assert ana["location"] == f"/v1/registrations/{ana['registration_id']}"
    for invite in (ana, olga):
        done = await registration_of(client, a, invite["location"])
        assert done["status"] == "completed", done
        assert done["user_id"] == invite["user_id"]
    listed = await members(client, a)
    assert {e: (m["role"], m["active"]) for e, m in listed.items()} == {
        "ana@example.com": ("operator", True), "olga@example.com": ("owner", True)}  # fmt: skip
    assert await members(client, b) == {}
    uid = ana["user_id"]

    async def change(method: str, suffix: str = "", who: Keyed | str = a, **kw: Any) -> Any:
        return await call(client, method, f"/v1/users/{uid}{suffix}", who, **kw)

    for other in (f"/v1/users/{uid}/disable", f"/v1/users/{uuid.uuid4()}/disable"):
        reply = await call(client, "POST", other, b)  # B's key on A's user: unknown
        assert (reply.status_code, reply.json()["error"]) == (404, "not_found")
    first = await change("POST", "/disable", headers={"Idempotency-Key": "off-1"})
    assert first.status_code == 200, first.text
    assert (await members(client, a))["ana@example.com"]["active"] is False
    retried = await change("POST", "/disable", headers={"Idempotency-Key": "off-1"})
    assert (retried.status_code, retried.json()) == (200, first.json())  # one command
    assert (await change("POST", "/disable")).json()["status"] == "accepted"  # already so
    assert (await change("POST", "/enable")).status_code == 200
    assert (await members(client, a))["ana@example.com"]["active"] is True
    promoted = await change("PUT", "/role", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    assert (await members(client, a))["ana@example.com"]["role"] == "admin"

    # Ana acts herself, with an access token: `by` is Ana, and the decider holds her to her rank.
    token, _ = issue(TokenKeys.from_secret_key(KEY), "access", uuid.UUID(uid), tenant,
                     datetime.now(UTC))  # fmt: skip
    me = (await call(client, "GET", "/v1/me", token)).json()
    assert (me["kind"], me["role"], me["subject"]) == ("user", "admin", uid)
    olga_id = olga["user_id"]
    above = await call(client, "POST", f"/v1/users/{olga_id}/disable", token)
    assert (above.status_code, above.json()["error"]) == (409, "role_not_allowed"), above.text
    reset = await call(client, "POST", f"/v1/users/{olga_id}/password-reset", token)
    assert (reset.status_code, reset.json()["error"]) == (409, "role_not_allowed")
    owner = await call(client, "POST", "/v1/users", token,
                       json={"email": "otto@example.com", "role": "owner"})  # fmt: skip
    assert (owner.status_code, owner.json()["error"]) == (409, "role_not_allowed"), owner.text
    assert (await members(client, token))["olga@example.com"]["active"] is True
    demote = await call(client, "PUT", f"/v1/users/{olga_id}/role", a, json={"role": "admin"})
    assert (demote.status_code, demote.json()["error"]) == (409, "last_owner"), demote.text

    reset = await change("POST", "/password-reset")
    assert reset.status_code == 200, reset.text
    reset_token = reset.json()["reset_token"]
    assert len(reset_token) >= 40
    assert reset.json()["user_id"] == uid
    assert (await change("POST", "/disable")).status_code == 200
    assert (await call(client, "GET", "/v1/me", token)).status_code == 401  # disabled: at once
    assert (await change("POST", "/enable")).status_code == 200
    removed = await change("DELETE")
    assert removed.status_code == 200, removed.text
    assert "ana@example.com" not in await members(client, a)
    assert (await call(client, "GET", "/v1/me", token)).status_code == 401  # not a member

    listing = (await call(client, "GET", "/v1/users", a)).text
    log = await log_bytes(fresh_broker)
    for secret in (reset_token, ana["invitation_token"], olga["invitation_token"]):
        assert secret.encode() not in log
        assert secret not in listing
        assert sha(secret) in log


async def test_bad_input_is_400_and_issues_nothing(people: People, db: asyncpg.Connection,
                                                   fresh_broker: str) -> None:  # fmt: skip
    client, a, _ = people
    before = (await log_bytes(fresh_broker)).count(b'"command_id"')
    uid = uuid.uuid4()
    bad = [
        ("POST", "/v1/api-keys", {"name": "x", "scopes": ["root"]}),
        ("POST", "/v1/api-keys", {"name": "x", "scopes": []}),
        ("POST", "/v1/api-keys", {"name": "x", "scopes": ["read", "read"]}),
        ("POST", "/v1/api-keys", {"name": "nul\x00", "scopes": ["read"]}),
        ("POST", "/v1/api-keys", {"name": "", "scopes": ["read"]}),
        ("POST", "/v1/api-keys", {"scopes": ["read"]}),
        ("POST", "/v1/users", {"email": "not-an-email", "role": "viewer"}),
        ("POST", "/v1/users", {"email": "ana@example.com", "role": "root"}),
        ("POST", "/v1/users", {"email": "a\x00na@example.com", "role": "viewer"}),
        ("POST", "/v1/users", {"email": "ana@example.com"}),
        ("PUT", f"/v1/users/{uid}/role", {"role": "root"}),
        ("POST", "/v1/api-keys?timeout=0", {"name": "x", "scopes": ["read"]}),
    ]
    for method, path, body in bad:
        reply = await call(client, method, path, a, json=body)
        assert (reply.status_code, reply.json()["error"]) == (400, "invalid_request"), (path, body)
    await asyncio.sleep(1.0)  # anything produced would be readable by now
    assert (await log_bytes(fresh_broker)).count(b'"command_id"') == before
    assert await db.fetchval("SELECT count(*) FROM command_spool") == 0
    assert await listed_keys(client, a) == {}


async def test_a_scoped_admin_key_reaches_no_further_than_an_admin(people: People) -> None:
    """A key acts with `by` none (as the platform would) in the decider, so the API holds it to
    an admin's reach: no owner granted, no owner touched."""
    client, a, _ = people
    made = await call(client, "POST", "/v1/api-keys", a,
                      json={"name": "crm", "scopes": ["read", "operate", "admin"]})  # fmt: skip
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    owner = await call(client, "POST", "/v1/users", a,
                       json={"email": "boss@example.com", "role": "owner"})  # fmt: skip
    assert owner.status_code == 202, owner.text
    assert (await registration_of(client, a, owner.headers["location"]))["status"] == "completed"
    boss = owner.json()["user_id"]
    for method, path, body in (
        ("POST", "/v1/users", {"email": "boss2@example.com", "role": "owner"}),
        ("POST", f"/v1/users/{boss}/disable", None),
        ("POST", f"/v1/users/{boss}/password-reset", None),
        ("PUT", f"/v1/users/{boss}/role", {"role": "viewer"}),
        ("DELETE", f"/v1/users/{boss}", None),
    ):
        reply = await call(client, method, path, key, json=body)
        assert (reply.status_code, reply.json()["error"]) == (409, "role_not_allowed"), path
    invited = await call(client, "POST", "/v1/users", key,
                         json={"email": "clerk@example.com", "role": "operator"})  # fmt: skip
    assert invited.status_code == 202, invited.text
    clerk = invited.json()["user_id"]
    assert (await registration_of(client, a, invited.headers["location"]))["status"] == "completed"
    promoted = await call(client, "PUT", f"/v1/users/{clerk}/role", key, json={"role": "owner"})
    assert (promoted.status_code, promoted.json()["error"]) == (409, "role_not_allowed")
    boss_now = (await members(client, a))["boss@example.com"]
    assert (boss_now["role"], boss_now["active"]) == ("owner", True)


async def test_a_key_cannot_mint_a_wider_key_or_grant_a_role_beyond_its_scopes(
    people: People,
) -> None:
    client, a, _ = people
    made = await call(client, "POST", "/v1/api-keys", a, json={"name": "scim", "scopes": ["admin"]})
    assert made.status_code == 201, made.text
    narrow = made.json()["key"]
    wider = await call(client, "POST", "/v1/api-keys", narrow,
                       json={"name": "x", "scopes": ["read", "operate", "admin"]})  # fmt: skip
    assert (wider.status_code, wider.json()["error"]) == (409, "role_not_allowed")
    invite = await call(client, "POST", "/v1/users", narrow,
                        json={"email": "op@example.com", "role": "operator"})  # fmt: skip
    assert (invite.status_code, invite.json()["error"]) == (409, "role_not_allowed")
    same = await call(
        client, "POST", "/v1/api-keys", narrow, json={"name": "y", "scopes": ["admin"]}
    )
    assert same.status_code == 201, same.text
