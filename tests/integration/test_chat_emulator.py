"""`zapflow chat` beside the Twilio emulator: the emulator hears what the contact writes (so its
24-hour window opens), and replies are printed as decided and as the emulator received them.

The emulator is the real one, in open-accounts mode as `zapflow up` runs it; the read models are
real PostgreSQL. The API, the agent and the sender are played by a small HTTP server: for each
signed webhook it sends through the emulator with the official SDK (or not) and writes the read
model's outbound row, as the platform would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import pytest
from twilio.request_validator import RequestValidator

from commands import conversation as conv
from emulator import CallbackOptions, EmulatorServer, create_app
from projections.database import connect
from tests.integration.test_twilio_emulator import fetch_until, sdk
from tests.integration.twilio_driver import KEY, TWIML, Tenant, add_tenant
from zapflow.chat import ChatTarget, chat
from zapflow.errors import ConfigurationError
from zapflow.processes import free_port
from zapflow.runtime import Endpoints

pytestmark = pytest.mark.integration

CONTACT = "whatsapp:+5511955554444"
TEMPLATE = "HX" + "c" * 32


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    app = create_app({}, callbacks=CallbackOptions(delay_s=0.01), open_accounts=True)
    with EmulatorServer(app) as server:
        yield server


class Platform:
    """Answers the webhooks of `zapflow chat` and replies as the text asks.

    `oi`: sent through the emulator, then decided in the read model half a second later (the
    emulator can be quicker than the projector); `foto`: with a picture; `modelo`: a template;
    `pessoa`: sent, and the conversation handed to a person; anything else: decided, never sent.
    """

    def __init__(self, tenant: Tenant, emulator: EmulatorServer, database_url: str) -> None:
        self.tenant, self.emulator, self.database_url = tenant, emulator, database_url
        self.sent: list[str] = []
        self.signatures: list[bool] = []
        self._seq = count(1)
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
                form = dict(parse_qsl(raw, keep_blank_values=True))
                signed = RequestValidator(tenant.token).validate(
                    platform.url + self.path, form, self.headers["X-Twilio-Signature"]
                )
                platform.signatures.append(signed)
                payload = TWIML.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                self.wfile.flush()
                platform.reply(form["Body"])

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = asyncio.get_running_loop().run_in_executor(None, self._server.serve_forever)

    def reply(self, body: str) -> None:
        client = sdk(self.emulator, self.tenant.account_sid, self.tenant.token)
        create: dict[str, Any] = {"to": CONTACT, "from_": self.tenant.sender}
        match body:
            case "oi":
                self.sent.append(client.messages.create(**create, body="Olá!").sid)
                asyncio.run(self._decide("Olá!", delay_s=0.5))
            case "foto":
                media = ["https://example.com/sorriso.png"]
                self.sent.append(client.messages.create(**create, body="Veja", media_url=media).sid)
                asyncio.run(self._decide("Veja"))
            case "modelo":
                variables = '{"1":"Ana"}'
                message = client.messages.create(
                    **create, content_sid=TEMPLATE, content_variables=variables
                )
                self.sent.append(message.sid)
                asyncio.run(self._decide("Olá, Ana!"))
            case "pessoa":
                self.sent.append(client.messages.create(**create, body="Já chamo.").sid)
                asyncio.run(self._decide("Já chamo.", state="handoff_requested"))
            case _:
                asyncio.run(self._decide("Vou pensar."))

    async def _decide(self, body: str, delay_s: float = 0.0, state: str = "bot") -> None:
        await asyncio.sleep(delay_s)
        conn = await connect(self.database_url)
        try:
            cid = uuid.UUID(conv.conversation_id(self.tenant.tenant_id, CONTACT))
            await conn.execute(
                "UPDATE conversations SET state = $3 WHERE tenant_id = $1 AND conversation_id = $2",
                self.tenant.tenant_id, cid, state,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO messages (tenant_id, message_id, conversation_id, direction, author,"
                " body, created_at, tenant_seq) VALUES ($1, $2, $3, 'outbound', 'bot', $4, $5, $6)",
                self.tenant.tenant_id, uuid.uuid4().hex, cid, body, datetime.now(UTC),
                next(self._seq),
            )  # fmt: skip
        finally:
            await conn.close()

    async def close(self) -> None:
        self._server.shutdown()
        await self._thread
        self._server.server_close()


async def _conversation(db: asyncpg.Connection, tenant: Tenant) -> None:
    now = datetime.now(UTC)
    await db.execute(
        "INSERT INTO conversations (tenant_id, conversation_id, contact, sender, state,"
        " started_at, updated_at) VALUES ($1, $2, $3, $4, 'bot', $5, $5)",
        tenant.tenant_id, uuid.UUID(conv.conversation_id(tenant.tenant_id, CONTACT)), CONTACT,
        tenant.sender, now,
    )  # fmt: skip


async def test_replies_are_shown_as_decided_and_as_the_emulator_received_them(
    db: asyncpg.Connection, database_url: str, emulator: EmulatorServer
) -> None:
    tenant = await add_tenant(db)
    await _conversation(db, tenant)
    other_account = "AC" + uuid.uuid4().hex
    own = sdk(emulator, tenant.account_sid, tenant.token)
    before = own.messages.create(to=CONTACT, from_=tenant.sender, body="from an earlier chat")
    own.messages.create(to="whatsapp:+5511900000009", from_=tenant.sender, body="someone else")
    sdk(emulator, other_account, "x").messages.create(to=CONTACT, from_="whatsapp:+1555", body="?")
    platform = Platform(tenant, emulator, database_url)
    said: list[str] = []
    try:
        target = ChatTarget(platform.url, platform.url, emulator.url)
        lines = ["oi", "foto", "", "modelo", "silêncio", "pessoa"]
        sent = await chat(
            Endpoints("unused", database_url), target, KEY, tenant.tenant_id, CONTACT, lines,
            said.append, reply_wait_s=10,
        )  # fmt: skip
    finally:
        await platform.close()
    assert sent == 5
    assert platform.signatures == [True] * 5
    assert said == [
        "bot: Olá!",
        "  twilio: Olá!",
        "bot: Veja",
        "  twilio: Veja [+1 media]",
        "bot: Olá, Ana!",
        f'  twilio: [template {TEMPLATE} {{"1":"Ana"}}]',
        "bot: Vou pensar.",
        "  (not received by the Twilio emulator within 5 s)",
        "bot: Já chamo.",
        "  twilio: Já chamo.",
        "(the conversation is now handoff requested)",
    ]
    # The emulator heard the contact first, so the free-form replies were inside the window;
    # the message sent before the chat (no inbound yet) failed with 63016.
    for sid in platform.sent[:2]:
        assert fetch_until(own, sid, "read").error_code is None
    assert fetch_until(own, before.sid, "failed").error_code == 63016


async def test_without_an_emulator_replies_are_shown_as_decided(
    db: asyncpg.Connection, database_url: str, emulator: EmulatorServer
) -> None:
    tenant = await add_tenant(db)
    await _conversation(db, tenant)
    platform = Platform(tenant, emulator, database_url)
    said: list[str] = []
    try:
        target = ChatTarget(platform.url, platform.url)
        await chat(Endpoints("unused", database_url), target, KEY, tenant.tenant_id, CONTACT,
                   ["silêncio"], said.append, reply_wait_s=10)  # fmt: skip
    finally:
        await platform.close()
    assert said == ["bot: Vou pensar."]


async def test_an_emulator_that_does_not_answer_is_a_configuration_error(
    db: asyncpg.Connection, database_url: str
) -> None:
    tenant = await add_tenant(db)
    gone = f"http://127.0.0.1:{free_port()}"
    target = ChatTarget("http://127.0.0.1:9", "http://localhost:8000", gone)
    with pytest.raises(ConfigurationError, match="emulator_url") as raised:
        await chat(Endpoints("unused", database_url), target, KEY, tenant.tenant_id, CONTACT,
                   ["oi"], print)  # fmt: skip
    assert "does not answer" in str(raised.value)
