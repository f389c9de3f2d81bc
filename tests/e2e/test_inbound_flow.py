"""Through a real `zapflow up`: tenant via the CLI, signed webhooks → events; restart → restored."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from twilio.request_validator import RequestValidator

from events.chain import verify_chain
from events.envelope import EventEnvelope
from events.tenant import AgentSettings
from streams import kafka
from streams.log import Position, read_all
from streams.topics import EVENTS
from tests.e2e.platform import Platform, env_for, start

pytestmark = pytest.mark.e2e
ACCOUNT = "AC" + "ab" * 16
TOKEN = "twilio-auth-token-e2e"  # a test fixture, not a credential
SENDER = "whatsapp:+14155238886"
CONTACT = "whatsapp:+5511912345678"


def _create_tenant(state: Path) -> tuple[uuid.UUID, str]:
    result = subprocess.run(
        [sys.executable, "-m", "zapflow", "tenants", "create", "--name", "Clínica Sorriso",
         "--twilio-account-sid", ACCOUNT, "--twilio-auth-token", "-", "--sender", SENDER],
        input=TOKEN + "\n", env=env_for(state), capture_output=True, text=True, check=False,
        timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    created = orjson.loads(result.stdout)
    assert created["api_key"].startswith("zf_")
    return uuid.UUID(created["tenant_id"]), created["api_key"]


def _webhook(
    platform: Platform, tenant: uuid.UUID, params: dict[str, str], token: str = TOKEN
) -> int:
    path = f"/v1/tenants/{tenant}/twilio/messages"
    signed_url = f"http://localhost:{platform.port}{path}"  # ZAPFLOW_PUBLIC_URL's default
    signature = RequestValidator(token).compute_signature(signed_url, params)
    response = httpx.post(
        platform.url + path, data=params, headers={"X-Twilio-Signature": signature}, timeout=10
    )
    if response.status_code == 200:
        assert response.headers["content-type"].startswith("text/xml")
        assert "<Response/>" in response.text
    return response.status_code


def _inbound(sid: str, body: str) -> dict[str, str]:
    return {"MessageSid": sid, "AccountSid": ACCOUNT, "From": CONTACT, "To": SENDER,
            "Body": body, "NumMedia": "0", "ProfileName": "Ana",
            "WaId": "5511912345678"}  # fmt: skip


async def _events(servers: str, tenant: uuid.UUID) -> list[tuple[Position, EventEnvelope]]:
    consumer = kafka.groupless_consumer(servers)
    await consumer.start()
    try:
        return [(p, e) async for p, e in read_all(consumer, EVENTS) if e.tenant_id == tenant]
    finally:
        await consumer.stop()


def _wait_for(
    platform: Platform, tenant: uuid.UUID, count: int
) -> list[tuple[Position, EventEnvelope]]:
    servers = str(platform.runtime()["bootstrap_servers"])
    found: list[tuple[Position, EventEnvelope]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = asyncio.run(_events(servers, tenant))
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{len(found)} of {count} events: {[e.type for _, e in found]}")


def _projected(platform: Platform, api_key: str, messages: int) -> dict[str, object]:
    """The tenant's one conversation from the query API, once it has `messages` messages."""
    auth = {"Authorization": f"Bearer {api_key}"}
    assert httpx.get(platform.url + "/v1/conversations", timeout=10).status_code == 401
    deadline, seen = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        page = httpx.get(platform.url + "/v1/conversations", headers=auth, timeout=10).json()
        if page["items"]:
            seen = page["items"][0]
            path = f"/v1/conversations/{seen['conversation_id']}/messages"
            found = httpx.get(platform.url + path, headers=auth, timeout=10).json()["items"]
            if len(found) == messages and not seen["opted_out"]:
                return dict(seen)
        time.sleep(0.5)
    raise AssertionError(f"the read model never showed {messages} messages: {seen}")


def test_webhooks_become_events_and_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state"
    # A debounce far longer than the gap between SM1 and STOP: no turn may start in between.
    platform = start(state, ZAPFLOW_AGENT_DEBOUNCE_S="3")
    try:
        platform.wait_ready()
        tenant, api_key = _create_tenant(state)
        for _ in range(3):  # Twilio delivering the same message three times
            assert _webhook(platform, tenant, _inbound("SM" + "1" * 32, "Oi, tudo bem?")) == 200
        assert _webhook(platform, tenant, _inbound("SM" + "2" * 32, "STOP")) == 200
        assert _webhook(platform, tenant, _inbound("SM" + "3" * 32, "x"), token="forged") == 403
        other_account = _inbound("SM" + "4" * 32, "x") | {"AccountSid": "AC" + "cd" * 16}
        assert _webhook(platform, tenant, other_account) == 403
        assert _webhook(platform, uuid.uuid4(), _inbound("SM" + "5" * 32, "x")) == 404
        before = _wait_for(platform, tenant, 5)
        time.sleep(2)  # let the projector archive what the log holds (it also drains on stop)
    finally:
        code, output = platform.interrupt()
    assert code == 0, output
    types = [e.type for _, e in before]
    assert types == ["TenantRegistered", "ConversationStarted", "InboundMessageReceived",
                     "InboundMessageReceived", "ContactOptedOut"]  # fmt: skip
    sids = [e.payload["message_sid"] for _, e in before if e.type == "InboundMessageReceived"]
    assert sids == ["SM" + "1" * 32, "SM" + "2" * 32]

    again = start(
        state, ZAPFLOW_AGENT_DEBOUNCE_S="3"
    )  # a new, empty in-memory broker: the log comes back from the archive
    try:
        again.wait_ready()
        assert _webhook(again, tenant, _inbound("SM" + "6" * 32, "VOLTAR")) == 200
        # The agent worker (the offline FAQ agent: no OPENAI_API_KEY here, no FAQ configured)
        # answers the one message that waits for a turn with the fallback and hands off.
        after = _wait_for(again, tenant, 10)
        conversation = _projected(again, api_key, messages=4)
    finally:
        code, output = again.interrupt()
    assert code == 0, output
    assert "restored" in output
    assert after[: len(before)] == before  # same partitions, offsets and events
    new = [e.type for _, e in after[len(before) :]]
    assert new[:5] == [
        "InboundMessageReceived", "ContactOptedIn",
        "AgentReplied", "OutboundMessageRequested", "HandoffRequested",
    ]  # fmt: skip
    # The sender may already have recorded the reply going out (and Twilio's verdict on it).
    assert set(new[5:]) <= {"OutboundMessageSent", "DeliveryStatusChanged"}, new
    replied = after[len(before) + 2][1].payload
    assert (replied["agent"], replied["trigger_message_sid"]) == ("faq", "SM" + "6" * 32)
    assert verify_chain([e for _, e in after]).ok
    assert (conversation["contact"], conversation["state"]) == (CONTACT, "handoff_requested")
    assert conversation["opted_out"] is False  # STOP, then VOLTAR
    assert conversation["last_message_preview"] == AgentSettings(system_prompt="x").fallback_message
