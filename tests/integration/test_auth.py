"""Authentication and authorisation over the whole route table, with the real platform.

Every route of the app is either on the short public list (health, metrics, the OpenAPI
document, Twilio's signed webhooks, and the session routes whose body is the credential) or
declares a permission through `api.auth`; a route added without one fails
`test_every_route_is_public_or_declares_a_permission`. Each protected route is then called with
every kind of bad credential (none, garbage, expired, tampered, wrong audience, `alg=none`,
HS256 signed with the wrong key, a refresh token, a revoked key, a disabled user's token) and
must answer 401, and with valid credentials that lack the permission (a viewer's token, keys
with other scopes) and must answer 403; valid credentials with the permission get neither.
The users, keys, revocation and disabling are real: commands on the log, decided, projected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute, _iter_included_route_candidates
from fastapi.testclient import TestClient
from starlette.routing import BaseRoute, Route

from api.passwords import hash_password_sync
from api.tokens import TokenKeys, derived_admin_token, issue
from commands.api_keys import CreateApiKey, RevokeApiKey
from commands.registration import StartRegistration, user_id_of
from commands.registration_saga import start
from commands.tenant_lifecycle import SuspendTenant
from commands.users import DisableUser, RequestPasswordReset
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.test_registration_saga import events, produce, runner
from tests.integration.twilio_driver import KEY

pytestmark = pytest.mark.integration

PASSWORD: Final = "correct horse battery staple"
PUBLIC: Final = {
    "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect",
    "/redoc", "/v1/auth/login", "/v1/auth/refresh", "/v1/auth/invitations/accept",
    "/v1/auth/password-reset/confirm",
}  # fmt: skip
TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    permission: str

    def url(self) -> str:
        parts = self.path.split("/")
        filled = [str(uuid.uuid4()) if p.startswith("{") else p for p in parts]
        return "/".join(filled)


@dataclass(frozen=True, slots=True)
class World:
    client: TestClient
    tenant: Keyed
    owner: str
    """The owner's access token."""
    refresh: str
    viewer: str
    disabled: str
    keys: dict[str, str]
    """Scoped API keys by name: read, operate, admin, revoked."""
    emails: dict[str, str]


def _permission(route: APIRoute) -> str | None:
    stack = list(route.dependant.dependencies)
    while stack:
        dependency = stack.pop()
        found = getattr(dependency.call, "zapflow_permission", None)
        if found is not None:
            return str(found)
        stack.extend(dependency.dependencies)
    return None


def _routes(client: TestClient) -> list[BaseRoute]:
    """Every route as served, included routers flattened (FastAPI >= 0.16x includes lazily);
    checked against the OpenAPI document, so no route can hide from this test."""
    app: FastAPI = client.app  # type: ignore[assignment]
    routes = list(_iter_included_route_candidates(app.routes))
    served = {getattr(route, "path", None) for route in routes}
    documented = set(app.openapi()["paths"])
    assert documented <= served, documented - served
    return routes


def _endpoints(client: TestClient) -> list[Endpoint]:
    out = []
    for route in _routes(client):
        if not isinstance(route, APIRoute) or route.path in PUBLIC:
            continue
        permission = _permission(route)
        assert permission is not None, f"{route.path} declares no permission"
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append(Endpoint(method, route.path, permission))
    return out


def _call(client: TestClient, endpoint: Endpoint, token: str | None) -> int:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    body: dict[str, Any] | None = None if endpoint.method in ("GET", "DELETE") else {}
    reply = client.request(endpoint.method, endpoint.url(), headers=headers, json=body)
    return reply.status_code


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    result: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return result


def _bad_credentials(world: World) -> dict[str, str | None]:
    """Credentials that are not valid for any route: each must be a 401."""
    keys = TokenKeys.from_secret_key(KEY)
    user, tenant = uuid.UUID(_claims(world.owner)["sub"]), world.tenant.tenant.tenant_id
    past = datetime.now(UTC) - timedelta(hours=2)
    expired, _ = issue(keys, "access", user, tenant, past)
    other_audience, _ = issue(
        TokenKeys.from_secret_key(KEY, audience="someone-else"), "access", user, tenant,
        datetime.now(UTC),
    )  # fmt: skip
    forged, _ = issue(TokenKeys.hs256(b"x" * 32), "access", user, tenant, datetime.now(UTC))
    header, payload, signature = world.owner.split(".")
    claims = _claims(world.owner)
    tampered = ".".join((header, _segment({**claims, "sub": str(uuid.uuid4())}), signature))
    unsigned = ".".join((_segment({"alg": "none", "typ": "JWT"}), payload, ""))
    return {
        "none": None,
        "garbage": "not-a-credential",
        "expired": expired,
        "wrong_audience": other_audience,
        "forged_key": forged,
        "tampered": tampered,
        "alg_none": unsigned,
        "refresh_as_access": world.refresh,
        "revoked_key": world.keys["revoked"],
        "disabled_user": world.disabled,
        "unknown_key": f"zf_{tenant.hex}_{secrets.token_urlsafe(32)}",
        "other_tenant_prefix": f"zf_{uuid.uuid4().hex}_{world.keys['admin'].split('_', 2)[2]}",
    }


def _lacking(world: World, permission: str) -> dict[str, str]:
    """Valid credentials of the tenant that lack `permission`: each must be a 403."""
    if permission == "read":
        return {"operate_key": world.keys["operate"]}
    if permission == "operate":
        return {"viewer": world.viewer, "read_key": world.keys["read"]}
    if permission == "admin":
        return {"viewer": world.viewer, "read_key": world.keys["read"],
                "operate_key": world.keys["operate"]}  # fmt: skip
    return {"owner": world.owner, "admin_key": world.keys["admin"],
            "tenant_key": world.tenant.api_key}  # fmt: skip


async def _register(brokers: str, tenant: uuid.UUID, email: str, role: str) -> uuid.UUID:
    rid = uuid.uuid4()
    command = StartRegistration.model_validate({
        "registration_id": rid, "email": email, "role": role,
        "password_hash": hash_password_sync(PASSWORD),
        "invitation_token_sha256": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
        "invitation_expires_at": datetime.now(UTC) + timedelta(days=7),
    })  # fmt: skip
    first = start(tenant, command)
    await produce(brokers, command_envelope(tenant, first.command, command_id=first.command_id))
    return user_id_of(rid)


async def _until(db: asyncpg.Connection, sql: str, *args: object) -> None:
    for _ in range(int(TIMEOUT_S / 0.2)):
        if await db.fetchval(sql, *args):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"never true: {sql} {args}")


async def _post(client: TestClient, path: str, body: dict[str, Any]) -> Any:
    """A request that waits on the decider, which runs on this test's event loop: sent from a
    thread, so the loop keeps deciding meanwhile."""
    return await asyncio.to_thread(client.post, path, json=body)


def _login(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    reply = client.post("/v1/auth/login", json={"email": email, "password": password})
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


@pytest.fixture
async def world(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> World:
    client, a, _ = platform
    tenant = a.tenant.tenant_id
    tag = uuid.uuid4().hex[:8]
    emails = {role: f"{role}-{tag}@example.com" for role in ("owner", "viewer", "operator")}
    async with runner(fresh_broker):
        users = {r: await _register(fresh_broker, tenant, e, r) for r, e in emails.items()}
        for user in users.values():
            await _until(db, "SELECT 1 FROM registrations WHERE user_id = $1 AND status = "
                             "'completed'", user)  # fmt: skip
    keys = {name: f"zf_{tenant.hex}_{secrets.token_urlsafe(32)}"
            for name in ("read", "operate", "admin", "revoked")}  # fmt: skip
    scopes = {"read": ["read"], "operate": ["operate"], "admin": ["read", "operate", "admin"],
              "revoked": ["read", "operate", "admin"]}  # fmt: skip
    ids = {name: uuid.uuid4() for name in keys}
    await produce(fresh_broker, *(
        command_envelope(tenant, CreateApiKey.model_validate({
            "key_id": ids[name], "name": name, "scopes": scopes[name],
            "key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        })) for name, key in keys.items()
    ))  # fmt: skip
    owner = _login(client, emails["owner"])
    viewer = _login(client, emails["viewer"])
    disabled = _login(client, emails["operator"])["access_token"]
    await produce(
        fresh_broker,
        command_envelope(tenant, RevokeApiKey(key_id=ids["revoked"])),
        command_envelope(tenant, DisableUser(user_id=users["operator"], reason="left")),
    )
    await _until(db, "SELECT 1 FROM api_keys WHERE key_id = $1 AND revoked_at IS NOT NULL",
                 ids["revoked"])  # fmt: skip
    await _until(db, "SELECT 1 FROM users WHERE user_id = $1 AND NOT active", users["operator"])
    return World(client, a, owner["access_token"], owner["refresh_token"],
                viewer["access_token"], disabled, keys, emails)  # fmt: skip


def test_every_route_is_public_or_declares_a_permission(
    platform: tuple[TestClient, Keyed, Keyed],
) -> None:
    client = platform[0]
    undeclared = []
    for route in _routes(client):
        if isinstance(route, APIRoute):
            if route.path not in PUBLIC and _permission(route) is None:
                undeclared.append(route.path)
        elif isinstance(route, Route):  # Twilio's webhooks: signed by Twilio, tested apart
            assert "/twilio/" in route.path or route.path in PUBLIC, route.path
    assert not undeclared, f"routes without a declared permission: {undeclared}"
    permissions = {e.permission for e in _endpoints(client)}
    assert {"read", "operate", "admin"} <= permissions, permissions


async def test_bad_credentials_are_401_and_missing_permissions_403_on_every_route(
    world: World,
) -> None:
    endpoints = _endpoints(world.client)
    assert len(endpoints) >= 10
    wrong: list[tuple[str, str, str, int]] = []
    bad = _bad_credentials(world)
    for endpoint in endpoints:
        for name, credential in bad.items():
            status = _call(world.client, endpoint, credential)
            if status != 401:
                wrong.append((endpoint.method, endpoint.path, name, status))
        for name, credential in _lacking(world, endpoint.permission).items():
            status = _call(world.client, endpoint, credential)
            if status not in ((401, 403) if endpoint.permission == "platform" else (403,)):
                wrong.append((endpoint.method, endpoint.path, name, status))
    assert not wrong, wrong


async def test_the_right_credentials_pass_every_route(world: World) -> None:
    """The other side of the same coin: the checks above refuse for the right reason."""
    admin_token = derived_admin_token(KEY)
    refused = []
    for endpoint in _endpoints(world.client):
        if endpoint.permission == "platform":
            credentials = {"platform_admin": admin_token}
        else:
            credentials = {"owner": world.owner, "admin_key": world.keys["admin"],
                           "tenant_key": world.tenant.api_key}  # fmt: skip
        if endpoint.permission == "read":
            credentials |= {"viewer": world.viewer, "read_key": world.keys["read"]}
        for name, credential in credentials.items():
            status = _call(world.client, endpoint, credential)
            if status in (401, 403):
                refused.append((endpoint.method, endpoint.path, name, status))
    assert not refused, refused


async def test_login_refresh_and_what_a_token_may_do(world: World, db: asyncpg.Connection) -> None:
    client = world.client
    me = _claims(world.owner)
    assert me["aud"] == "zapflow-api"
    assert me["typ"] == "access"
    assert me["exp"] > me["iat"]
    assert "role" not in me  # the role is read on every request, never trusted from the token
    conversations = client.get(
        "/v1/conversations", headers={"Authorization": f"Bearer {world.owner}"}
    )
    assert conversations.status_code == 200
    refreshed = client.post("/v1/auth/refresh", json={"refresh_token": world.refresh})
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["role"] == "owner"
    fresh = refreshed.json()["access_token"]
    assert (
        client.get("/v1/conversations", headers={"Authorization": f"Bearer {fresh}"}).status_code
        == 200
    )
    for refused in (
        {"refresh_token": world.owner},  # an access token is not a refresh token
        {"refresh_token": world.refresh[:-4] + "AAAA"},
        {"refresh_token": "x"},
    ):
        reply = client.post("/v1/auth/refresh", json=refused)
        assert reply.status_code == 401
        assert reply.json()["error"] == "invalid_credentials"


def test_login_answers_the_same_for_every_wrong_credential(world: World) -> None:
    answers = set()
    for body in (
        {"email": "nobody@example.com", "password": PASSWORD},
        {"email": world.emails["owner"], "password": "wrong password!"},
        {"email": world.emails["operator"], "password": PASSWORD},  # disabled
    ):
        reply = world.client.post("/v1/auth/login", json=body)
        answers.add((reply.status_code, reply.text))
    assert answers == {(401, json.dumps({"error": "invalid_credentials",
                                         "detail": "the e-mail, password or token is not valid"},
                                        separators=(",", ":")))}  # fmt: skip
    for bad in ({"email": "not-an-email", "password": "x"}, {"email": "a@b.c"}, {}):
        assert world.client.post("/v1/auth/login", json=bad).status_code == 400


async def test_an_invitation_and_a_password_reset_set_passwords_through_the_log(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> None:
    client, a, _ = platform
    tenant, rid = a.tenant.tenant_id, uuid.uuid4()
    email, invitation = f"new-{rid.hex[:8]}@example.com", secrets.token_urlsafe(24)
    command = StartRegistration.model_validate({
        "registration_id": rid, "email": email, "role": "operator",
        "invitation_token_sha256": hashlib.sha256(invitation.encode()).hexdigest(),
        "invitation_expires_at": datetime.now(UTC) + timedelta(days=7),
    })  # fmt: skip
    first = start(tenant, command)
    async with runner(fresh_broker):
        await produce(fresh_broker, command_envelope(tenant, first.command,
                                                     command_id=first.command_id))  # fmt: skip
        await _until(db, "SELECT 1 FROM registrations WHERE registration_id = $1 AND status = "
                         "'completed'", rid)  # fmt: skip
    refused = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert refused.status_code == 401  # no password yet
    accept = "/v1/auth/invitations/accept"
    wrong = await _post(client, accept, {"email": email, "token": "nope", "password": PASSWORD})
    assert (wrong.status_code, wrong.json()["error"]) == (409, "invalid_token")
    nobody = {"email": "nobody@example.com", "token": "nope", "password": PASSWORD}
    unknown = await _post(client, accept, nobody)
    assert (unknown.status_code, unknown.json()) == (409, wrong.json())  # one answer for both
    weak = await _post(client, accept, {"email": email, "token": invitation, "password": "short"})
    assert (weak.status_code, weak.json()["error"]) == (400, "weak_password")
    accepted = await _post(
        client, accept, {"email": email, "token": invitation, "password": PASSWORD}
    )
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["role"] == "operator"
    await _until(db, "SELECT 1 FROM users WHERE email = $1 AND password_hash IS NOT NULL", email)
    again = await _post(client, accept, {"email": email, "token": invitation, "password": "x" * 12})
    assert (again.status_code, again.json()["error"]) == (409, "invalid_token")
    before = _login(client, email)
    user = uuid.UUID(before["user_id"])

    reset = secrets.token_urlsafe(24)
    await produce(fresh_broker, command_envelope(tenant, RequestPasswordReset.model_validate({
        "user_id": user, "token_sha256": hashlib.sha256(reset.encode()).hexdigest(),
        "expires_at": datetime.now(UTC) + timedelta(hours=1),
    })))  # fmt: skip
    confirm, new = "/v1/auth/password-reset/confirm", "a brand new passphrase"
    for _ in range(50):  # until the reset is decided
        done = await _post(client, confirm, {"email": email, "token": reset, "password": new})
        if done.status_code != 409:
            break
        await asyncio.sleep(0.2)
    assert done.status_code == 200, done.text
    assert (
        client.post("/v1/auth/login", json={"email": email, "password": PASSWORD}).status_code
        == 401
    )
    assert _login(client, email, new)["user_id"] == str(user)
    # The new password ends every session made before it: the old tokens are refused.
    stale = await _post(client, "/v1/auth/refresh", {"refresh_token": before["refresh_token"]})
    assert stale.status_code == 401
    me = await asyncio.to_thread(
        client.get, "/v1/me", headers={"Authorization": f"Bearer {before['access_token']}"}
    )
    assert me.status_code == 401
    text = " ".join(json.dumps(e.payload) for e in await events(fresh_broker))
    assert "PasswordChanged" in " ".join(e.type for e in await events(fresh_broker))
    for secret in (invitation, reset, PASSWORD, new):
        assert secret not in text


async def test_a_suspended_tenants_people_still_log_in_and_read(
    world: World, fresh_broker: str, db: asyncpg.Connection
) -> None:
    tenant = world.tenant.tenant.tenant_id
    await produce(fresh_broker, command_envelope(tenant, SuspendTenant(reason="unpaid")))
    await _until(db, "SELECT 1 FROM tenants WHERE tenant_id = $1 AND suspended", tenant)
    session = await asyncio.to_thread(_login, world.client, world.emails["owner"])
    for credential in (session["access_token"], world.viewer, world.keys["read"]):
        for path in ("/v1/conversations", "/v1/metrics?from=2026-11-01&to=2026-11-30", "/v1/me"):
            reply = await _get(world.client, path, credential)
            assert reply.status_code == 200, (path, reply.text)
    made = await _post_as(world.client, "/v1/api-keys", session["access_token"],
                          {"name": "x", "scopes": ["read"]})  # fmt: skip
    assert (made.status_code, made.json()["error"]) == (409, "tenant_suspended")


async def _get(client: TestClient, path: str, credential: str) -> Any:
    headers = {"Authorization": f"Bearer {credential}"}
    return await asyncio.to_thread(client.get, path, headers=headers)


async def _post_as(client: TestClient, path: str, credential: str, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {credential}"}
    return await asyncio.to_thread(client.post, path, headers=headers, json=body)
