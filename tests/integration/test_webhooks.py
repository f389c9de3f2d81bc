"""Twilio webhooks on the real broker and PostgreSQL: a signed form in, one command record out."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlencode

import asyncpg
import pytest
from fastapi.testclient import TestClient
from twilio.request_validator import RequestValidator

from api.twilio_form import delivery_status, inbound_message, parse_form
from tests.integration.twilio_driver import (
    CONTACT,
    LIMIT,
    PARTITIONS,
    PUBLIC,
    TWIML,
    Reply,
    Tenant,
    add_tenant,
    app_client,
    commands_until,
    inbound,
    post,
    sid,
)
from zapflow.devbroker import start_dev_broker
from zapflow.setup import ensure_topics_on

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def broker(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A broker of this module's own, with zapflow's topics."""
    dev = start_dev_broker(0, tmp_path_factory.mktemp("webhooks") / "tansu.log")
    try:
        await ensure_topics_on(dev.bootstrap_servers, partitions=PARTITIONS)
        yield dev.bootstrap_servers
    finally:
        dev.stop()


@pytest.fixture
async def tenant(db: asyncpg.Connection) -> Tenant:
    return await add_tenant(db)


@pytest.fixture
def client(broker: str, database_url: str, tenant: Tenant) -> Iterator[TestClient]:
    with app_client(broker, database_url) as client:
        yield client


async def test_a_signed_message_becomes_one_command(
    broker: str, client: TestClient, tenant: Tenant
) -> None:
    params = inbound(tenant, sid(), MediaUrl0="https://api.twilio.com/m/ME1", NewParam="kept")
    response = post(client, tenant, params)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text == TWIML
    (command,) = await commands_until(broker, tenant, params["MessageSid"])
    expected = inbound_message(parse_form(urlencode(params).encode()))
    assert command.type == "ReceiveInboundMessage"
    assert command.payload == expected.payload()
    assert command.payload["extra"] == {
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
        "NewParam": "kept",
    }
    assert command.command_id == uuid.uuid5(
        tenant.tenant_id, f"ReceiveInboundMessage:{params['MessageSid']}"
    )
    assert command.correlation_id == command.command_id
    assert command.idempotency_key == params["MessageSid"]


async def test_a_webhook_delivered_three_times_is_three_copies_of_one_command(
    broker: str, client: TestClient, tenant: Tenant
) -> None:
    params = inbound(tenant, sid())
    for _ in range(3):
        assert post(client, tenant, params).status_code == 200
    sentinel = inbound(tenant, sid())
    assert post(client, tenant, sentinel).status_code == 200
    commands = await commands_until(broker, tenant, sentinel["MessageSid"])
    copies = [c for c in commands if c.payload["message_sid"] == params["MessageSid"]]
    assert len(copies) == 3
    assert len({c.command_id for c in copies}) == 1
    assert all(c.payload == copies[0].payload for c in copies)


async def test_refused_webhooks_record_nothing(
    broker: str, client: TestClient, tenant: Tenant
) -> None:
    refused: dict[str, tuple[int, str]] = {}

    def expect(params: dict[str, str], response: Reply, status: int, code: str) -> None:
        assert (response.status_code, response.json()["error"]) == (status, code), response.text
        assert set(response.json()) == {"error", "detail"}
        refused[params["MessageSid"]] = (status, code)

    params = inbound(tenant, sid())
    path = tenant.path()
    forged = RequestValidator("not-the-token").compute_signature(PUBLIC + path, params)
    response = client.post(path, data=params, headers={"X-Twilio-Signature": forged})
    expect(params, response, 403, "signature_invalid")

    params = inbound(tenant, sid())
    expect(params, client.post(path, data=params), 403, "signature_missing")

    params = inbound(tenant, sid(), AccountSid="AC" + "f" * 32)
    expect(params, post(client, tenant, params), 403, "account_mismatch")

    params = inbound(tenant, sid(), To="whatsapp:+15550001111")
    expect(params, post(client, tenant, params), 403, "sender_mismatch")

    params = inbound(tenant, sid())
    other = Tenant(uuid.uuid4(), tenant.account_sid, tenant.token, tenant.sender)
    expect(params, post(client, other, params), 404, "unknown_tenant")
    response = client.post("/v1/tenants/not-a-uuid/twilio/messages", data=params)
    assert response.status_code == 404

    params = inbound(tenant, sid())
    body = urlencode(params).encode() + b"&broken"
    headers = {"X-Twilio-Signature": "x", "Content-Type": "application/x-www-form-urlencoded"}
    expect(params, client.post(path, content=body, headers=headers), 400, "malformed_body")

    params = inbound(tenant, sid())
    without_from = {k: v for k, v in params.items() if k != "From"}
    expect(params, post(client, tenant, without_from), 400, "missing_parameter")

    params = inbound(tenant, sid(), Body="x" * LIMIT)
    expect(params, post(client, tenant, params), 413, "body_too_large")

    params = inbound(tenant, sid(), Body="y" * LIMIT)
    chunks = iter([urlencode(params).encode()[i : i + 512] for i in range(0, LIMIT + 600, 512)])
    response = client.post(path, content=chunks, headers=headers)  # chunked: no Content-Length
    expect(params, response, 413, "body_too_large")

    sentinel = inbound(tenant, sid())
    assert post(client, tenant, sentinel).status_code == 200
    commands = await commands_until(broker, tenant, sentinel["MessageSid"])
    assert [c.payload["message_sid"] for c in commands] == [sentinel["MessageSid"]]
    assert len(refused) == 9


async def test_a_status_callback_becomes_record_delivery_status(
    broker: str, client: TestClient, tenant: Tenant
) -> None:
    params = {
        "MessageSid": sid(),
        "AccountSid": tenant.account_sid,
        "From": tenant.sender,
        "To": CONTACT,
        "MessageStatus": "delivered",
        "ChannelPrefix": "whatsapp",
        "EventType": "DELIVERED",
    }
    response = post(client, tenant, params, "status")
    assert (response.status_code, response.text) == (200, TWIML)
    confused = params | {"MessageSid": sid(), "From": "whatsapp:+15550001111"}
    assert post(client, tenant, confused, "status").json()["error"] == "sender_mismatch"
    (command,) = await commands_until(broker, tenant, params["MessageSid"])
    assert command.type == "RecordDeliveryStatus"
    assert command.payload == delivery_status(parse_form(urlencode(params).encode())).payload()
    assert command.command_id == uuid.uuid5(
        tenant.tenant_id, f"RecordDeliveryStatus:{params['MessageSid']}:delivered"
    )


def test_the_webhooks_are_in_the_openapi_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    refusals = {"200", "400", "403", "404", "413"}
    for path, responses in (
        ("/v1/tenants/{tenant_id}/twilio/messages", refusals | {"423"}),  # a suspended tenant
        ("/v1/tenants/{tenant_id}/twilio/status", refusals),  # taken while suspended too
    ):
        operation = schema["paths"][path]["post"]
        assert set(operation["responses"]) == responses
        assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
        refusal = operation["responses"]["403"]["content"]["application/json"]["schema"]
        assert refusal == {"$ref": "#/components/schemas/Refusal"}
    assert schema["components"]["schemas"]["Refusal"]["required"] == ["error", "detail"]
