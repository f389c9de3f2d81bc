"""An in-memory decider shell for identity tests: real tenant books, real sealing, one shared log.

Commands go through the same path as in the decider (envelope → registry → `TenantBook.decide`
→ seal → `record`), so routing, validation and recognition of repeated command ids are the real
ones; only Kafka is left out. The log is one list in decision order across all tenants, which is
what a process manager reading every partition may see.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Final

from commands.registration import StartRegistration
from commands.registration_saga import Saga, SagaCommand, evolve, next_step, start
from commands.tenant import RegisterTenant
from events.chain import head_of, seal
from events.envelope import CommandEnvelope, EventEnvelope
from events.platform import CommandRejected
from events.registry import Message
from streams.tenant_book import TenantBook
from tests.builders import EPOCH

ARGON: Final = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
NAMESPACE: Final = uuid.UUID("6f1c1a9e-0000-4000-8000-000000000000")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def tenant_id(index: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"tenant-{index}")


def registration_id(index: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"registration-{index}")


def start_registration(
    rid: uuid.UUID, email: str, role: str = "owner", by: uuid.UUID | None = None
) -> StartRegistration:
    return StartRegistration.model_validate({
        "registration_id": rid, "email": email, "role": role, "password_hash": ARGON,
        "invitation_token_sha256": sha(f"invite-{rid}"),
        "invitation_expires_at": EPOCH + timedelta(days=7), "by": by,
    })  # fmt: skip


class World:
    def __init__(self) -> None:
        self.books: dict[uuid.UUID, TenantBook] = {}
        self.log: list[Message] = []
        self.envelopes: list[EventEnvelope] = []
        """The sealed events of `log`, as a reader of the event topic gets them."""
        self.now: datetime = EPOCH
        self._issued = 0

    def book(self, tenant: uuid.UUID) -> TenantBook:
        return self.books.setdefault(tenant, TenantBook(tenant))

    def submit(
        self, tenant: uuid.UUID, command: Message, command_id: uuid.UUID | None = None
    ) -> list[Message]:
        """Decide one command as the decider would; the events it appended (none if repeated)."""
        self._issued += 1
        self.now += timedelta(seconds=1)
        cid = command_id or uuid.uuid5(NAMESPACE, f"command-{self._issued}")
        envelope = CommandEnvelope(
            command_id=cid, tenant_id=tenant, type=command.type,
            schema_version=command.schema_version, issued_at=self.now, correlation_id=cid,
            payload=command.payload(),
        )  # fmt: skip
        book = self.book(tenant)
        sealed, head = [], book.head
        for draft, event in book.decide(envelope, self.now):
            sealed.append((seal(draft, head), event))
            head = head_of(sealed[-1][0])
        for sealed_envelope, event in sealed:
            book.record(sealed_envelope, event)
            self.log.append(event)
            self.envelopes.append(sealed_envelope)
        return [event for _, event in sealed]

    def outcome(self, tenant: uuid.UUID, command: Message) -> list[str]:
        """What deciding `command` recorded: event types, or "rejected:<code>" for a rejection."""
        return [
            f"rejected:{event.reason_code}" if isinstance(event, CommandRejected) else event.type
            for event in self.submit(tenant, command)
        ]

    def issue(self, command: SagaCommand) -> list[Message]:
        return self.submit(command.tenant_id, command.command, command.command_id)

    def register_tenant(self, tenant: uuid.UUID) -> None:
        self.submit(tenant, RegisterTenant(
            name=f"Tenant {tenant.hex[:6]}", twilio_account_sid=f"AC{tenant.hex}",
            twilio_auth_token_encrypted="sealed", senders=["whatsapp:+14155238886"],
            api_key_sha256=sha(str(tenant)),
        ))  # fmt: skip

    def saga(self, rid: uuid.UUID) -> Saga:
        """The saga as a process that just (re)started would see it: folded from the whole log."""
        state = Saga(rid)
        for event in self.log:
            state = evolve(state, event)
        return state

    def begin(self, tenant: uuid.UUID, command: StartRegistration) -> list[Message]:
        return self.issue(start(tenant, command))

    def run(self, rid: uuid.UUID, limit: int = 20) -> list[str]:
        """Drive the saga until it has nothing left to issue; the commands' types, in order."""
        issued: list[str] = []
        for _ in range(limit):
            commands = next_step(self.saga(rid))
            if not commands:
                return issued
            for command in commands:
                issued.append(command.command.type)
                self.issue(command)
        raise AssertionError(f"saga {rid} still running after {limit} commands: {issued}")
