"""The sender on the real broker, PostgreSQL, decider, projector and API, against the Twilio
emulator reached through the real `twilio` SDK: one request is one WhatsApp message whatever
Twilio does (429, 500, no answer, a dropped connection), the policy is checked at send time,
a 63016 falls back to the tenant's template once, a suspended tenant's messages wait for its
reactivation and then go once, and a rotated Twilio token is used from the rotation on."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import openai
import pytest
from twilio.request_validator import RequestValidator

from api.tenant_cache import DEFAULT_REFRESH_S
from commands.tenant_lifecycle import ReactivateTenant, RotateTwilioCredentials, SuspendTenant
from emulator import CallbackOptions, EmulatorServer, Fault, create_app
from projections.credentials import encrypt_secret
from streams.agent import AgentOptions, run_agent
from streams.llm import OpenAIChat
from streams.twilio_api import Created, HttpxTwilioClient, TwilioMessages, Unknown
from tests.integration import fake_openai as fake
from tests.integration.fake_openai import FakeOpenAI
from tests.integration.sender_rig import (
    TEMPLATE,
    Rig,
    command_envelope,
    contact,
    live_rig,
    settled,
)
from tests.integration.test_query_api import Keyed
from tests.integration.twilio_driver import KEY, inbound, sid

pytestmark = pytest.mark.integration
SENDER = "whatsapp:+14155238886"
UNUSED = "http://127.0.0.1:9/status"  # callbacks are not looked at here


@pytest.fixture
async def rig(fresh_broker: str, database_url: str, db: asyncpg.Connection) -> AsyncIterator[Rig]:
    async with live_rig(fresh_broker, database_url, db) as live:
        yield live


async def test_a_reply_is_one_twilio_message_whose_status_reaches_read(rig: Rig) -> None:
    who = contact(1)
    request, oid = rig.reply(rig.a, who, "Olá! Abrimos às 8h.")
    await rig.send(rig.inbound(rig.a, who), request)
    async with rig.sender():
        row = await rig.until_status(rig.a, oid, lambda s: s == "read")
    assert row is not None
    assert row["status"] == "read"
    (params,) = rig.received()
    t = rig.a.tenant
    assert (params["To"], params["From"], params["Body"]) == (who, t.sender, "Olá! Abrimos às 8h.")
    assert params["StatusCallback"] == f"{rig.api_url}/v1/tenants/{t.tenant_id}/twilio/status"
    assert row["twilio_sid"] == rig.emulator_server.emulator.received()[0]["sid"]


async def test_rate_limits_errors_and_lost_answers_never_duplicate_a_message(rig: Rig) -> None:
    emulator = rig.emulator_server.emulator
    for fault in (Fault(kind="rate_limit"), Fault(kind="server_error"),
                  Fault(kind="slow", delay_s=3.0), Fault(kind="disconnect")):  # fmt: skip
        emulator.inject(fault)
    requests = [rig.reply(rig.a, contact(n), f"mensagem {n}") for n in range(6)]
    await rig.send(*(rig.inbound(rig.a, contact(n)) for n in range(6)), *(r for r, _ in requests))
    async with rig.sender():
        rows = [await rig.until_status(rig.a, oid, settled) for _, oid in requests]
    assert all(row is not None and row["twilio_sid"] for row in rows), rows
    bodies = Counter(params["Body"] for params in rig.received())
    assert bodies == Counter(f"mensagem {n}" for n in range(6))  # each exactly once
    # The slow and the dropped answers were created at Twilio: found, not sent again.
    sids = {row["twilio_sid"] for row in rows if row is not None}
    assert sids == {entry["sid"] for entry in emulator.received()}


async def test_a_refused_message_fails_with_twilio_code(rig: Rig) -> None:
    who = "whatsapp:not-a-number"
    request, oid = rig.reply(rig.a, who, "Olá")
    await rig.send(rig.inbound(rig.a, who, at_emulator=False), request)
    async with rig.sender():
        row = await rig.until_status(rig.a, oid, settled)
    assert row is not None
    assert (row["status"], row["error_code"]) == ("failed", "21211")
    assert rig.received() == []


async def test_outside_the_window_the_template_goes_or_nothing_does(rig: Rig) -> None:
    """Requested inside the window, sent after it closed: A has a template, B has none."""
    await rig.send(rig.configure(rig.a, TEMPLATE))
    opened = datetime.now(UTC) - timedelta(hours=24) + timedelta(seconds=2)
    pending = []
    for keyed in (rig.a, rig.b):
        request, oid = rig.reply(keyed, contact(7), "Posso ajudar?")
        await rig.send(rig.inbound(keyed, contact(7), issued_at=opened), request)
        pending.append((keyed, oid))
    await asyncio.sleep(3.0)  # the window closes before the sender runs
    async with rig.sender():
        (a_row, b_row) = [await rig.until_status(k, oid, settled) for k, oid in pending]
    assert a_row is not None
    assert b_row is not None
    assert a_row["status"] in ("queued", "sent", "delivered", "read")
    assert (b_row["status"], b_row["error_code"]) == ("blocked", "outside_service_window")
    (params,) = rig.received()
    assert params["ContentSid"] == TEMPLATE.content_sid
    assert "Body" not in params
    assert params["From"] == rig.a.tenant.sender


async def test_an_opted_out_contact_gets_nothing(rig: Rig) -> None:
    who = contact(8)
    request, oid = rig.reply(rig.a, who, "Temos uma promoção!")
    await rig.send(rig.inbound(rig.a, who), request, rig.inbound(rig.a, who, "STOP"))
    for _ in range(300):  # the STOP is decided (and projected) before the sender starts
        if await rig.db.fetchval(
            "SELECT opted_out FROM conversations WHERE tenant_id = $1 AND contact = $2",
            rig.a.tenant.tenant_id, who,
        ):  # fmt: skip
            break
        await asyncio.sleep(0.1)
    async with rig.sender():
        row = await rig.until_status(rig.a, oid, settled)
    assert row is not None
    assert (row["status"], row["error_code"]) == ("blocked", "opted_out")
    assert rig.received() == []


async def test_63016_falls_back_to_the_template_once(rig: Rig) -> None:
    await rig.send(rig.configure(rig.a, TEMPLATE))
    who = contact(9)
    request, oid = rig.reply(rig.a, who, "Seu horário foi confirmado")
    # The platform thinks the window is open; WhatsApp (the emulator) has no inbound: 63016.
    await rig.send(rig.inbound(rig.a, who, at_emulator=False), request)
    async with rig.sender():
        row = await rig.until_status(rig.a, oid, lambda s: s in ("failed", "undelivered"))
        for _ in range(100):
            if len(rig.received()) >= 2:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # and nothing more comes
    assert row is not None
    assert row["error_code"] == "63016"
    first, fallback = rig.received()
    assert first["Body"] == "Seu horário foi confirmado"
    assert fallback["ContentSid"] == TEMPLATE.content_sid
    assert "Body" not in fallback
    types = Counter(e.type for e in await rig.events(rig.a))
    assert types["OutboundMessageRequested"] == 2
    assert types["OutboundMessageSent"] == 2


async def test_a_signed_message_is_answered_by_the_model_and_delivered_once_to_read(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path: a signed webhook over HTTP → the model (the real openai SDK against a
    scripted server) gets the tenant's prompt and the history → exactly one messages.create
    with the right To/From/Body → signed status callbacks → the reply's status is `read`."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    await rig.send(rig.configure(rig.a))  # prompt: "Você atende a Clínica."
    t, who = rig.a.tenant, contact(11)
    llm = FakeOpenAI()
    llm.script.append(fake.text("Abrimos às 8h."))
    model = OpenAIChat(openai.AsyncOpenAI(api_key="sk-test", base_url=llm.base_url,
                                          max_retries=0, timeout=10.0))  # fmt: skip
    stop = asyncio.Event()
    agent = asyncio.create_task(run_agent(rig.brokers, stop, model, None,
                                          AgentOptions(debounce_s=0.0)))  # fmt: skip
    try:
        rig.emulator_server.emulator.record_inbound(who, t.sender, body="Que horas abrem?")
        params = {**inbound(t, sid()), "From": who, "Body": "Que horas abrem?"}
        path = t.path()
        signature = RequestValidator(t.token).compute_signature(rig.api_url + path, params)
        async with httpx.AsyncClient() as http, rig.sender():
            answer = await http.post(rig.api_url + path, data=params,
                                     headers={"X-Twilio-Signature": signature})  # fmt: skip
            assert answer.status_code == 200, answer.text
            for _ in range(300):
                if rig.received():
                    break
                await asyncio.sleep(0.1)
            (created,) = rig.emulator_server.emulator.received()
            oid = None
            for _ in range(300):  # the sender's result reaches the read model
                oid = await rig.db.fetchval(
                    "SELECT message_id FROM messages WHERE tenant_id = $1 AND twilio_sid = $2",
                    t.tenant_id, created["sid"],
                )  # fmt: skip
                if oid is not None:
                    break
                await asyncio.sleep(0.1)
            assert oid is not None
            row = await rig.until_status(rig.a, oid, lambda s: s == "read")
    finally:
        stop.set()
        await agent
        llm.close()
    assert row is not None
    assert row["status"] == "read"
    (request,) = llm.requests
    assert request["messages"][0] == {"role": "system", "content": "Você atende a Clínica."}
    assert request["messages"][-1] == {"role": "user", "content": "Que horas abrem?"}
    (sent,) = rig.received()
    assert (sent["To"], sent["From"], sent["Body"]) == (who, t.sender, "Abrimos às 8h.")
    statuses = [c["params"]["MessageStatus"] for c in rig.emulator_server.emulator.callbacks()]
    assert "read" in statuses


async def test_a_contact_who_opts_out_while_twilio_throttles_us_gets_nothing(rig: Rig) -> None:
    """The policy is checked again before every retry while nothing has gone out."""
    rig.emulator_server.emulator.inject(Fault(kind="rate_limit"), count=12)
    who = contact(12)
    request, oid = rig.reply(rig.a, who, "Promoção!")
    await rig.send(rig.inbound(rig.a, who), request)
    async with rig.sender(backoff_s=0.2, backoff_max_s=1.0):
        await asyncio.sleep(0.8)  # throttled, retrying
        await rig.send(rig.inbound(rig.a, who, "STOP"))
        row = await rig.until_status(rig.a, oid, settled)
    assert row is not None
    assert (row["status"], row["error_code"]) == ("blocked", "opted_out")
    assert rig.received() == []


async def test_a_message_twilio_never_answers_ends_failed_not_stuck(rig: Rig) -> None:
    rig.emulator_server.emulator.inject(Fault(kind="server_error"), count=2)
    who = contact(13)
    request, oid = rig.reply(rig.a, who, "Olá")
    later, later_oid = rig.reply(rig.a, who, "Ainda aí?")
    await rig.send(rig.inbound(rig.a, who), request, later)
    async with rig.sender(max_attempts=2):
        row = await rig.until_status(rig.a, oid, settled)
        next_row = await rig.until_status(rig.a, later_oid, settled)
    assert row is not None
    assert (row["status"], row["error_code"]) == ("failed", "retries_exhausted")
    assert next_row is not None  # the conversation went on
    assert next_row["twilio_sid"] is not None
    assert [p["Body"] for p in rig.received()] == ["Ainda aí?"]


async def test_a_call_that_waited_for_a_connection_never_goes_out_after_its_deadline() -> None:
    """The ledger's rule (ADR 0015) needs every call over by its start + the timeout. httpx's
    timeout is per phase: a create queued behind a busy connection would still go out once
    the connection is free, seconds later, after a lookup could have missed it."""
    account, token = "AC" + "1" * 32, "secret-token"
    server = EmulatorServer(create_app({account: token}, callbacks=CallbackOptions(read=False)))
    with server:
        server.emulator.record_inbound(contact(7), SENDER)
        server.emulator.inject(Fault(kind="slow", delay_s=2.0))
        http = HttpxTwilioClient(server.url, timeout_s=5.0, max_connections=1)
        api = TwilioMessages.for_account(http, account, token)
        loop = asyncio.get_running_loop()
        try:
            calls = [
                api.create(
                    to=contact(7),
                    from_=SENDER,
                    status_callback=UNUSED,
                    body=body,
                    deadline=loop.time() + deadline_s,
                )
                for body, deadline_s in (("first", 10.0), ("second", 1.0))
            ]
            first, second = await asyncio.gather(*calls)
            await asyncio.sleep(1.0)  # the connection is free: nothing queued may use it now
        finally:
            await http.close()
        assert isinstance(first, Created)
        assert isinstance(second, Unknown)
        bodies = [m.body for m in server.emulator.messages(account)]
        assert bodies == ["first"]


async def _until_directory(rig: Rig, keyed: Keyed, sql: str, expected: object) -> None:
    """Until the tenant's directory row says so: the change is in the log (projected)."""
    for _ in range(300):
        if await rig.db.fetchval(sql, keyed.tenant.tenant_id) == expected:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the tenant directory never had {expected!r} for {sql}")


async def _suspend(rig: Rig, keyed: Keyed, suspended: bool = True) -> None:
    tenant_id = keyed.tenant.tenant_id
    body = SuspendTenant(reason="unpaid invoice") if suspended else ReactivateTenant()
    await rig.send(command_envelope(tenant_id, body))
    await _until_directory(rig, keyed, "SELECT suspended FROM tenants WHERE tenant_id = $1",
                           suspended)  # fmt: skip


async def test_a_suspended_tenants_request_waits_and_goes_once_after_its_reactivation(
    rig: Rig,
) -> None:
    """Requested before the suspension, not sent yet: nothing reaches Twilio while the tenant
    is suspended, across a restart of the sender (B, active, is served meanwhile), and one
    message after the reactivation, through the ledger as any other."""
    who = contact(14)
    request, oid = rig.reply(rig.a, who, "Sua consulta está confirmada")
    await rig.send(rig.inbound(rig.a, who), request)
    assert await rig.until_status(rig.a, oid, lambda s: s == "requested") is not None
    await _suspend(rig, rig.a)
    other, other_oid = rig.reply(rig.b, who, "B segue atendendo")
    await rig.send(rig.inbound(rig.b, who), other)
    async with rig.sender():
        served = await rig.until_status(rig.b, other_oid, settled)
        await asyncio.sleep(1.0)  # A's message, queued before B's, would have gone by now
    assert served is not None
    assert served["twilio_sid"] is not None
    async with rig.sender():  # a restart folds the suspension again
        await asyncio.sleep(2.0)
    assert [params["Body"] for params in rig.received()] == ["B segue atendendo"]
    held = await rig.message(rig.a, oid)
    assert held is not None
    assert held["status"] == "requested"

    async with rig.sender():
        await _suspend(rig, rig.a, suspended=False)
        row = await rig.until_status(rig.a, oid, settled)
        await asyncio.sleep(2.0)  # and nothing more comes
    assert row is not None
    assert row["twilio_sid"] is not None
    bodies = Counter(params["Body"] for params in rig.received())
    assert bodies == Counter(["B segue atendendo", "Sua consulta está confirmada"])
    types = Counter(e.type for e in await rig.events(rig.a))
    assert types["OutboundMessageSent"] == 1


async def test_a_tenant_suspended_while_twilio_throttles_us_sends_nothing_until_reactivated(
    rig: Rig,
) -> None:
    """The suspension is read from the log while the sender is retrying a 429: no further
    call is made (the ledger counts every call), and the message goes once the tenant is
    reactivated."""
    rig.emulator_server.emulator.inject(Fault(kind="rate_limit"), count=12)
    who = contact(15)
    request, oid = rig.reply(rig.a, who, "Promoção!")
    await rig.send(rig.inbound(rig.a, who), request)

    async def calls() -> int:
        found = await rig.db.fetchval(
            "SELECT attempts FROM send_ledger WHERE tenant_id = $1 AND outbound_id = $2",
            rig.a.tenant.tenant_id, oid,
        )  # fmt: skip
        return int(found or 0)

    async with rig.sender(backoff_s=0.1, backoff_max_s=0.5):
        for _ in range(100):  # throttled, retrying
            if await calls() >= 2:
                break
            await asyncio.sleep(0.05)
        await _suspend(rig, rig.a)
        await asyncio.sleep(1.0)  # a call begun before the suspension was read ends
        made = await calls()
        await asyncio.sleep(2.0)  # four times the longest backoff
        assert await calls() == made
        assert made < 12  # faults were left: held, not sent through
        await _suspend(rig, rig.a, suspended=False)
        row = await rig.until_status(rig.a, oid, settled)
    assert row is not None
    assert row["twilio_sid"] is not None
    assert [params["Body"] for params in rig.received()] == ["Promoção!"]


async def test_the_sender_uses_the_rotated_token_from_the_rotation_on(rig: Rig) -> None:
    """Rotated at Twilio (the old token refused from then on) and on the log: the next
    message is created with the new token, and its status callbacks, signed with it, are
    taken by the webhook."""
    async with rig.sender():
        who = contact(16)
        first, first_oid = rig.reply(rig.a, who, "Antes da troca")
        await rig.send(rig.inbound(rig.a, who), first)
        assert await rig.until_status(rig.a, first_oid, lambda s: s == "read") is not None

        t, token = rig.a.tenant, "rotated-" + sid()
        rig.emulator_server.emulator.rotate_auth_token(t.account_sid, token)
        sealed = encrypt_secret(KEY, token, t.tenant_id)
        await rig.send(command_envelope(t.tenant_id, RotateTwilioCredentials(
            twilio_account_sid=t.account_sid, twilio_auth_token_encrypted=sealed)))  # fmt: skip
        await _until_directory(
            rig, rig.a, "SELECT twilio_auth_token_encrypted FROM tenants WHERE tenant_id = $1",
            sealed,
        )  # fmt: skip
        await asyncio.sleep(DEFAULT_REFRESH_S)  # the webhook may re-read the tenant for a refusal
        second, second_oid = rig.reply(rig.a, who, "Depois da troca")
        await rig.send(second)
        row = await rig.until_status(rig.a, second_oid, lambda s: s == "read")
    assert row is not None
    assert row["status"] == "read"
    assert [params["Body"] for params in rig.received()] == ["Antes da troca", "Depois da troca"]
