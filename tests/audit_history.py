"""Tenant histories for the audit tests, decided and sealed in process by the decider's own
`TenantBook` (what the decider appends, without a broker), and a source that replays a list."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from commands.agent import RecordAgentTurn
from commands.agent_config import ConfigureAgent
from commands.inbound import ReceiveInboundMessage
from commands.operator import HandOffToHuman
from commands.send import RecordSendResult
from commands.tenant import RegisterTenant
from events.chain import seal
from events.conversation import ToolCall
from events.envelope import CommandEnvelope, EventEnvelope, encode_event
from events.registry import Message
from events.tenant import AgentSettings
from projections.archive import ArchivedRecord
from streams.tenant_book import TenantBook

ACCOUNT: Final = "AC" + "7" * 32
SENDER: Final = "whatsapp:+14155238886"
CONTACT: Final = "whatsapp:+5511987654321"
START: Final = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DOC: Final = Path(__file__).resolve().parent.parent / "docs" / "audit.md"


def documented_script() -> str:
    """The third-party verification script, exactly as docs/audit.md shows it."""
    text = DOC.read_text()
    block = text.split("<!-- verify-script:start -->", 1)[1].split("<!-- verify-script:end -->")[0]
    return block.strip().removeprefix("```python").removesuffix("```").strip() + "\n"


def api_key(tenant_id: uuid.UUID) -> str:
    return f"zk_audit_{tenant_id.hex}"


@dataclass(slots=True)
class History:
    """One tenant's events, each command decided at its own minute."""

    tenant_id: uuid.UUID
    book: TenantBook = field(init=False)
    events: list[EventEnvelope] = field(default_factory=list)
    clock: datetime = START
    commands: int = 0

    def __post_init__(self) -> None:
        self.book = TenantBook(self.tenant_id)

    def run(self, body: Message) -> list[EventEnvelope]:
        self.commands += 1
        self.clock += timedelta(minutes=1)
        command_id = uuid.uuid5(self.tenant_id, f"audit-{self.commands}")
        command = CommandEnvelope(
            command_id=command_id, tenant_id=self.tenant_id, type=body.type,
            schema_version=body.schema_version, issued_at=self.clock, correlation_id=command_id,
            payload=body.payload(),
        )  # fmt: skip
        sealed = []
        for draft, event in self.book.decide(command, self.clock):
            envelope = seal(draft, self.book.head)
            self.book.record(envelope, event)
            sealed.append(envelope)
        self.events += sealed
        return sealed

    @property
    def values(self) -> list[bytes]:
        return [encode_event(e)[1] for e in self.events]

    def register(self) -> None:
        self.run(
            RegisterTenant(
                name=f"Clínica {self.tenant_id.hex[:6]}", twilio_account_sid=ACCOUNT,
                twilio_auth_token_encrypted="c2VhbGVk", senders=[SENDER],
                api_key_sha256=hashlib.sha256(api_key(self.tenant_id).encode()).hexdigest(),
            )
        )  # fmt: skip

    def configure(self, prompt: str, temperature: float = 0.3) -> None:
        self.run(ConfigureAgent(settings=AgentSettings(system_prompt=prompt,
                                                       temperature=temperature)))  # fmt: skip

    def inbound(self, body: str, contact: str = CONTACT) -> str:
        sid = f"SM{uuid.uuid5(self.tenant_id, f'{self.commands}-{body}').hex}"
        self.run(ReceiveInboundMessage(message_sid=sid, account_sid=ACCOUNT, contact=contact,
                                       sender=SENDER, body=body))  # fmt: skip
        return sid

    def turn(self, trigger: str, reply: str, *, handoff: bool = False) -> None:
        calls = [ToolCall(name="handoff_to_human", arguments={"reason": "asked for a person"},
                          accepted=True, result="ok")] if handoff else []  # fmt: skip
        self.run(
            RecordAgentTurn(
                conversation_id=self.conversation_id(), turn_id=f"turn-{trigger}",
                trigger_message_sid=trigger, agent="llm", model="gpt-4o-mini",
                prompt_hash="a" * 64, reply=reply, tool_calls=calls, tokens_in=120,
                tokens_out=30, latency_ms=800,
            )
        )  # fmt: skip

    def sent(self) -> None:
        outbound = [e for e in self.events if e.type == "OutboundMessageRequested"][-1]
        self.run(RecordSendResult(conversation_id=self.conversation_id(),
                                  outbound_id=outbound.payload["outbound_id"], outcome="sent",
                                  message_sids=[f"SM{uuid.uuid4().hex}"]))  # fmt: skip

    def take_over(self, operator: str = "ana") -> None:
        self.run(HandOffToHuman(conversation_id=self.conversation_id(), operator=operator))

    def conversation_id(self, contact: str = CONTACT) -> str:
        from commands.conversation import conversation_id

        return conversation_id(self.tenant_id, contact)

    def seq_of(self, event_type: str) -> int:
        return next(e.tenant_seq for e in self.events if e.type == event_type)


def story(tenant_id: uuid.UUID) -> History:
    """Registered, agent v1, a question answered and sent, agent v2, a hand-off asked for by the
    bot, a human takes over."""
    history = History(tenant_id)
    history.register()
    history.configure("Você é a assistente v1.")
    first = history.inbound("Oi, qual o horário?")
    history.turn(first, "Das 8h às 18h.")
    history.sent()
    history.configure("Você é a assistente v2.", temperature=0.00001)
    second = history.inbound("Quero falar com uma pessoa")
    history.turn(second, "Vou chamar alguém da equipe.", handoff=True)
    history.take_over()
    return history


def records(events: Sequence[EventEnvelope], partition: int = 0) -> list[ArchivedRecord]:
    """The log records of `events` (offsets from 0): key, value and headers as appended."""
    out = []
    for offset, envelope in enumerate(events):
        key, value, headers = encode_event(envelope)
        out.append(ArchivedRecord(partition, offset, key, value, headers, 0))
    return out


@dataclass(slots=True)
class ListSource:
    """A `streams.replay.Source` over records held in memory, a few per batch."""

    items: list[ArchivedRecord]
    batch: int = 3
    scanned: int = 0
    total: int | None = None

    def describe(self) -> dict[str, object]:
        return {"kind": "memory"}

    async def batches(self) -> AsyncIterator[Sequence[ArchivedRecord]]:
        self.total = len(self.items)
        for start in range(0, len(self.items), self.batch):
            chunk = self.items[start : start + self.batch]
            self.scanned += len(chunk)
            yield chunk
