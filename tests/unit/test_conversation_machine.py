"""Hypothesis drives random interleavings of commands; the machine's invariants always hold."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Final

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from commands import conversation as conv
from commands.errors import Rejected
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.operator import (
    CloseConversation,
    HandOffToHuman,
    RequestHandoff,
    RequestOutboundMessage,
    ReturnToBot,
)
from events.conversation import DeliveryStatusChanged, OutboundMessageRequested

pytestmark = pytest.mark.unit
TENANT: Final = uuid.UUID("00000000-0000-4000-8000-0000000000bb")
CONTACT: Final = "whatsapp:+5511977776666"
CID: Final = conv.conversation_id(TENANT, CONTACT)
RANK: Final = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "read": 4}
STATUSES: Final = [*RANK, "failed", "undelivered", "accepted", "canceled", "receiving"]
BODIES: Final = ["Oi", "STOP", "parar", "START", "voltar", "quero falar com alguém"]


class ConversationMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.state = conv.Conversation(CID)
        self.now = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
        self.inbound_events: Counter[str] = Counter()
        self.statuses: dict[str, str] = {}
        self.violations: list[str] = []

    def _run(self, command: conv.ConversationCommand) -> None:
        before = self.state
        try:
            events = conv.decide(before, command, conv.Context(uuid.uuid4(), self.now))
        except Rejected:
            return
        for event in events:
            self._check(before, event)
            self.state = conv.evolve(self.state, event)

    def _check(self, before: conv.Conversation, event: object) -> None:
        if isinstance(event, DeliveryStatusChanged):
            old = self.statuses.get(event.message_sid)
            if old in ("failed", "undelivered"):
                self.violations.append(f"{event.message_sid} left terminal {old}")
            if old in RANK and event.status in RANK and RANK[event.status] <= RANK[old]:
                self.violations.append(f"{event.message_sid} regressed {old} -> {event.status}")
            self.statuses[event.message_sid] = event.status
        if getattr(event, "type", "") == "InboundMessageReceived":
            self.inbound_events[event.message_sid] += 1  # type: ignore[attr-defined]
        if isinstance(event, OutboundMessageRequested):
            if before.opted_out:
                self.violations.append("a send to an opted-out contact")
            if event.author == "bot" and before.state != "bot":
                self.violations.append(f"a bot send while {before.state}")
            if event.author == "human" and before.state != "human":
                self.violations.append(f"a human send while {before.state}")
            window_open = (
                before.window_open_until is not None and self.now < before.window_open_until
            )
            if event.content_sid is None and not window_open:
                self.violations.append("a free-form send outside the 24-hour window")

    @rule(sid=st.sampled_from(["SM1", "SM2", "SM3", "SM4"]), body=st.sampled_from(BODIES))
    def inbound(self, sid: str, body: str) -> None:
        self._run(ReceiveInboundMessage(message_sid=sid, account_sid="AC1", contact=CONTACT,
                                        sender="whatsapp:+1415", body=body))  # fmt: skip

    @rule(sid=st.sampled_from(["SMo1", "SMo2"]), value=st.sampled_from(STATUSES))
    def status(self, sid: str, value: str) -> None:
        self._run(RecordDeliveryStatus(message_sid=sid, account_sid="AC1", status=value,
                                       contact=CONTACT, sender="whatsapp:+1415"))  # fmt: skip

    @rule(kind=st.sampled_from(["request", "handoff", "return", "close"]))
    def operator(self, kind: str) -> None:
        commands: dict[str, conv.ConversationCommand] = {
            "request": RequestHandoff(conversation_id=CID, reason="bot unsure"),
            "handoff": HandOffToHuman(conversation_id=CID, operator="ana"),
            "return": ReturnToBot(conversation_id=CID, operator="ana"),
            "close": CloseConversation(conversation_id=CID, closed_by="ana"),
        }
        self._run(commands[kind])

    @rule(author=st.sampled_from(["bot", "human"]), template=st.booleans())
    def send(self, author: str, template: bool) -> None:
        self._run(
            RequestOutboundMessage(
                conversation_id=CID,
                author="bot" if author == "bot" else "human",
                body=None if template else "Olá",
                content_sid="HX" + "b" * 32 if template else None,
            )
        )

    @rule(hours=st.integers(min_value=1, max_value=30))
    def time_passes(self, hours: int) -> None:
        self.now += timedelta(hours=hours)

    @invariant()
    def no_violation(self) -> None:
        assert self.violations == []

    @invariant()
    def each_message_sid_recorded_once(self) -> None:
        assert all(count == 1 for count in self.inbound_events.values())


ConversationMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                                 deadline=None)  # fmt: skip
test_conversation_machine = ConversationMachine.TestCase
