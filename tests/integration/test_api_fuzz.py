"""Schemathesis against the OpenAPI document, with a valid key: no 5xx, responses match the schema.

The app runs for real (PostgreSQL as `zapflow_app` under RLS, a broker for the commands) with
one tenant, one conversation and its messages in the read models, so generated requests reach
rows as well as misses; the admin API is called with the platform admin token. Twilio's
webhooks are left out: without a signature every request is a 403 before anything else happens
(their refusals have tests of their own).
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from api.app import create_app
from api.container import ApiConfig
from api.tokens import derived_admin_token
from projections.credentials import encrypt_secret
from projections.migrations import migrate
from tests.integration.twilio_driver import KEY, app_client

pytestmark = pytest.mark.integration

_SCHEMA_APP = create_app(
    ApiConfig("postgresql://unused/unused", "unused:9092", "http://unused", secret_key=KEY)
)
schema = schemathesis.openapi.from_dict(_SCHEMA_APP.openapi()).exclude(path_regex="/twilio/")
# Schema-valid requests only, authenticated by us: in a query string every value is text, so
# "negative" cases are mostly valid strings; the 4xx for bad input have tests of their own.
schema.config.generation.update(modes=[GenerationMode.POSITIVE], with_security_parameters=False)
AT = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Fuzzed:
    client: TestClient
    api_key: str
    conversation_id: uuid.UUID
    tenant_id: uuid.UUID


@pytest.fixture
async def fuzzed(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> AsyncIterator[Fuzzed]:
    """A broker of its own: generated commands must not auto-create the session broker's
    `zapflow.commands` with the broker's default partition count (other tests own it)."""
    await migrate(db)
    tenant, key, cid = uuid.uuid4(), "zf_" + secrets.token_urlsafe(24), uuid.uuid4()
    await db.execute(
        "INSERT INTO tenants (tenant_id, name, twilio_account_sid, twilio_auth_token_encrypted, "
        "api_key_sha256, registered_at, updated_seq) VALUES ($1, 'fuzz', $2, $3, $4, $5, 1)",
        tenant, "AC" + "f" * 32, encrypt_secret(KEY, "token", tenant),
        hashlib.sha256(key.encode()).hexdigest(), AT,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO conversations (tenant_id, conversation_id, contact, sender, state, "
        "started_at, updated_at, last_message_at, last_message_preview, unread_count) "
        "VALUES ($1, $2, 'whatsapp:+5511999990000', 'whatsapp:+14155238886', 'bot', $3, $3, "
        "$3, 'Oi', 1)",
        tenant, cid, AT,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO messages (tenant_id, message_id, conversation_id, direction, author, body, "
        "media, twilio_sid, status, created_at, tenant_seq) VALUES ($1, 'SM1', $2, 'inbound', "
        "'contact', 'Oi', '[{\"url\": \"https://api.twilio.com/m\", \"content_type\": null}]', "
        "'SM1', 'received', $3, 3)",
        tenant, cid, AT,
    )  # fmt: skip
    with app_client(fresh_broker, database_url) as client:
        yield Fuzzed(client, key, cid, tenant)


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_the_api_honours_its_openapi_document(case: schemathesis.Case[Any], fuzzed: Fuzzed) -> None:
    wanted = case.path_parameters and "conversation_id" in case.path_parameters
    if wanted and secrets.randbelow(2):  # half the time, a conversation that exists
        case.path_parameters["conversation_id"] = str(fuzzed.conversation_id)
    if case.path_parameters and "tenant_id" in case.path_parameters and secrets.randbelow(2):
        case.path_parameters["tenant_id"] = str(fuzzed.tenant_id)
    admin = case.path.startswith("/v1/admin/")
    if case.method != "GET":  # no decider runs here: do not wait for one (people, keys and the
        case.query = {**(case.query or {}), "timeout": 0.05}  # admin API may wait by default)
    bearer = derived_admin_token(KEY) if admin else fuzzed.api_key  # the admin API: its token
    headers = {**dict(case.headers or {}), "Authorization": f"Bearer {bearer}"}
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
    response = fuzzed.client.request(
        kwargs["method"],
        kwargs["url"],
        headers=kwargs.get("headers"),
        params=kwargs.get("params"),
        json=kwargs.get("json"),
        content=kwargs.get("content") or kwargs.get("data"),
    )
    assert response.status_code < 500, response.text
    # Left out: "schema-valid data is accepted" (a cursor is any string to the schema, yet only
    # those this API issued are accepted, by design), and "ignored auth", which re-sends the
    # request over the network (test_query_api covers every operation without a valid key).
    excluded = [positive_data_acceptance, ignored_auth]
    case.validate_response(response, headers=headers, excluded_checks=excluded)


def test_every_tenant_operation_declares_the_bearer_scheme() -> None:
    document = _SCHEMA_APP.openapi()
    assert document["components"]["securitySchemes"]["Bearer"]["scheme"] == "bearer"
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        if path.startswith("/v1/") and "/twilio/" not in path and not path.startswith("/v1/auth/")
        for method, operation in item.items()
    ]
    assert len(operations) >= 7
    for path, method, operation in operations:
        assert operation.get("security") == [{"Bearer": []}], (method, path)
        assert "401" in operation["responses"], (method, path)
        assert "404" in operation["responses"] or "{" not in path, (method, path)  # ids: 404
