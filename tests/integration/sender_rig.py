"""A live platform for the sender's tests: the real decider, projector and API (served over HTTP,
so the emulator's signed status callbacks reach it), the Twilio emulator, and the sender.

Commands are produced straight onto `zapflow.commands` (an inbound message, a bot's reply
request), as the API and the agent runner would; what reached Twilio is read from the
emulator, and what the platform made of it from the log and the read models.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
import uvicorn

from api.app import create_app
from api.container import ApiConfig
from commands import conversation as conv
from commands.agent_config import ConfigureAgent
from commands.inbound import ReceiveInboundMessage
from commands.operator import RequestOutboundMessage
from emulator import CallbackOptions, EmulatorServer
from emulator import create_app as create_emulator
from events.envelope import CommandEnvelope, EventEnvelope, encode_command
from events.registry import Message
from events.tenant import AgentSettings, Template
from projections.migrations import migrate
from projections.runner import run_projector
from streams import kafka
from streams.decider import run_decider
from streams.log import read_all
from streams.sender import SenderOptions, run_sender
from streams.topics import COMMANDS
from tests.integration.test_query_api import Keyed, _keyed, _registration
from tests.integration.twilio_driver import KEY

WAIT_S: Final = 40.0
TEMPLATE: Final = Template(purpose="window_closed", content_sid="HX" + "e" * 32,
                           variables={"1": "Clínica"})  # fmt: skip
SECRET_KEY_ENV: Final = base64.urlsafe_b64encode(KEY).decode()


def contact(n: int) -> str:
    return f"whatsapp:+5511955{n:06d}"


def command_envelope(
    tenant_id: uuid.UUID, body: Message, *, issued_at: datetime | None = None,
    command_id: uuid.UUID | None = None,
) -> CommandEnvelope:  # fmt: skip
    cid = command_id or uuid.uuid4()
    return CommandEnvelope(
        command_id=cid, tenant_id=tenant_id, type=body.type, schema_version=body.schema_version,
        issued_at=issued_at or datetime.now(UTC), correlation_id=cid, payload=body.payload(),
    )  # fmt: skip


class _Api:
    """The API app on uvicorn in a thread (a real HTTP endpoint for the callbacks)."""

    def __init__(self, config_for: Callable[[str], ApiConfig]) -> None:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        app = create_app(config_for(self.url))
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    def __enter__(self) -> _Api:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._socket.close()


@dataclass
class Rig:
    brokers: str
    database_url: str
    db: asyncpg.Connection
    a: Keyed
    b: Keyed
    api_url: str
    emulator_server: EmulatorServer

    @property
    def emulator_url(self) -> str:
        return self.emulator_server.url

    def options(self, **overrides: Any) -> SenderOptions:
        values: dict[str, Any] = {
            "public_url": self.api_url, "twilio_api_url": self.emulator_url, "timeout_s": 1.0,
            "settle_s": 2.0, "backoff_s": 0.1, "backoff_max_s": 1.0,
        }  # fmt: skip
        return SenderOptions(**(values | overrides))

    @contextlib.asynccontextmanager
    async def sender(self, **overrides: Any) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_sender(self.brokers, self.database_url, KEY, self.options(**overrides), stop)
        )
        try:
            yield
        finally:
            stop.set()
            await task

    async def events(self, keyed: Keyed) -> list[EventEnvelope]:
        consumer = kafka.groupless_consumer(self.brokers)
        await consumer.start()
        try:
            found = [e async for _, e in read_all(consumer)]
        finally:
            await consumer.stop()
        return [e for e in found if e.tenant_id == keyed.tenant.tenant_id]

    async def send(self, *envelopes: CommandEnvelope) -> None:
        producer = kafka.producer(self.brokers)
        await producer.start()
        try:
            for envelope in envelopes:
                key, value, headers = encode_command(envelope)
                await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)
        finally:
            await producer.stop()

    def inbound(
        self, keyed: Keyed, who: str, body: str = "Oi", *, issued_at: datetime | None = None,
        at_emulator: bool = True,
    ) -> CommandEnvelope:  # fmt: skip
        """A customer's message (and, unless told otherwise, the emulator's window opened)."""
        t = keyed.tenant
        if at_emulator:
            self.emulator_server.emulator.record_inbound(who, t.sender, at=issued_at, body=body)
        return command_envelope(t.tenant_id, ReceiveInboundMessage(
            message_sid="SM" + uuid.uuid4().hex, account_sid=t.account_sid, contact=who,
            sender=t.sender, body=body,
        ), issued_at=issued_at)  # fmt: skip

    def reply(self, keyed: Keyed, who: str, body: str) -> tuple[CommandEnvelope, str]:
        """The bot's request to send `body` to `who`, and the outbound id it will get."""
        cid = conv.conversation_id(keyed.tenant.tenant_id, who)
        envelope = command_envelope(keyed.tenant.tenant_id, RequestOutboundMessage(
            conversation_id=cid, author="bot", body=body))  # fmt: skip
        return envelope, str(uuid.uuid5(envelope.command_id, "outbound"))

    def configure(self, keyed: Keyed, *templates: Template) -> CommandEnvelope:
        settings = AgentSettings(system_prompt="Você atende a Clínica.", templates=list(templates))
        return command_envelope(keyed.tenant.tenant_id, ConfigureAgent(settings=settings))

    async def message(self, keyed: Keyed, outbound_id: str) -> asyncpg.Record | None:
        return await self.db.fetchrow(
            "SELECT status, twilio_sid, error_code, body, content_sid FROM messages "
            "WHERE tenant_id = $1 AND message_id = $2", keyed.tenant.tenant_id, outbound_id,
        )  # fmt: skip

    async def until_status(
        self, keyed: Keyed, outbound_id: str, done: Callable[[str | None], bool]
    ) -> asyncpg.Record | None:
        deadline = time.monotonic() + WAIT_S
        while True:
            row = await self.message(keyed, outbound_id)
            if (row is not None and done(row["status"])) or time.monotonic() > deadline:
                return row
            await asyncio.sleep(0.1)

    def received(self) -> list[dict[str, Any]]:
        """The create requests the emulator accepted: their form parameters (one value each)."""
        return [{name: values[-1] for name, values in entry["params"].items()}
                for entry in self.emulator_server.emulator.received()]  # fmt: skip


def settled(status: str | None) -> bool:
    return status not in (None, "requested")


@contextlib.contextmanager
def _emulator(rig_accounts: dict[str, str]) -> Iterator[EmulatorServer]:
    app = create_emulator(rig_accounts, callbacks=CallbackOptions(delay_s=0.05))
    with EmulatorServer(app) as server:
        yield server


@contextlib.asynccontextmanager
async def live_rig(brokers: str, database_url: str, db: asyncpg.Connection) -> AsyncIterator[Rig]:
    await migrate(db)
    a, b = _keyed(), _keyed()
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_decider(brokers, stop, session_timeout_ms=6000)),
        asyncio.create_task(run_projector(brokers, database_url, stop)),
    ]
    accounts = {k.tenant.account_sid: k.tenant.token for k in (a, b)}

    def config(url: str) -> ApiConfig:
        return ApiConfig(database_url, brokers, url, secret_key=KEY, produce_timeout_s=1.0)

    try:
        with _emulator(accounts) as emulator, _Api(config) as api:
            rig = Rig(brokers, database_url, db, a, b, api.url, emulator)
            await rig.send(_registration(a), _registration(b))
            for keyed in (a, b):
                deadline = time.monotonic() + WAIT_S
                while not await db.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1",
                                            keyed.tenant.tenant_id):  # fmt: skip
                    assert time.monotonic() < deadline, "tenant not projected"
                    await asyncio.sleep(0.2)
            yield rig
    finally:
        stop.set()
        await asyncio.gather(*tasks)
