"""The conversation state machine, given events / when command / then events (or rejection)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from commands import conversation as conv
from commands.errors import Rejected
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.keywords import keyword
from commands.operator import (
    CloseConversation,
    HandOffToHuman,
    RequestHandoff,
    RequestOutboundMessage,
    ReturnToBot,
)

pytestmark = pytest.mark.unit
TENANT = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
CONTACT = "whatsapp:+5511988887777"
CID = conv.conversation_id(TENANT, CONTACT)
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
TEMPLATE = "HX" + "a" * 32


def given(*commands: conv.ConversationCommand, at: datetime = NOW) -> conv.Conversation:
    state = conv.Conversation(CID)
    for command in commands:
        for event in conv.decide(state, command, conv.Context(uuid.uuid4(), at)):
            state = conv.evolve(state, event)
    return state


def when(
    state: conv.Conversation, command: conv.ConversationCommand, at: datetime = NOW
) -> list[str]:
    return [e.type for e in conv.decide(state, command, conv.Context(uuid.uuid4(), at))]


def inbound(sid: str = "SM1", body: str = "Oi") -> ReceiveInboundMessage:
    return ReceiveInboundMessage(
        message_sid=sid, account_sid="AC1", contact=CONTACT, sender="whatsapp:+1415", body=body
    )


def status(value: str, sid: str = "SMo") -> RecordDeliveryStatus:
    return RecordDeliveryStatus(
        message_sid=sid, account_sid="AC1", status=value, contact=CONTACT, sender="whatsapp:+1415"
    )


def bot(body: str | None = "Olá", content_sid: str | None = None) -> RequestOutboundMessage:
    return RequestOutboundMessage(
        conversation_id=CID, author="bot", body=body, content_sid=content_sid
    )


def human(body: str = "Aqui é a Ana") -> RequestOutboundMessage:
    return RequestOutboundMessage(conversation_id=CID, author="human", body=body)


HANDOFF = HandOffToHuman(conversation_id=CID, operator="ana")
REQUEST = RequestHandoff(conversation_id=CID, reason="asked for a person")
RETURN = ReturnToBot(conversation_id=CID, operator="ana")
CLOSE = CloseConversation(conversation_id=CID, closed_by="ana")


def rejected(
    state: conv.Conversation, command: conv.ConversationCommand, at: datetime = NOW
) -> str:
    with pytest.raises(Rejected) as caught:
        conv.decide(state, command, conv.Context(uuid.uuid4(), at))
    return caught.value.code


def test_first_message_starts_the_conversation_and_opens_the_window() -> None:
    assert when(given(), inbound()) == ["ConversationStarted", "InboundMessageReceived"]
    state = given(inbound())
    assert (state.started, state.state, state.window_open_until) == (
        True,
        "bot",
        NOW + timedelta(hours=24),
    )


def test_a_message_sid_is_recorded_exactly_once() -> None:
    assert when(given(inbound("SM1")), inbound("SM1")) == []
    assert when(given(inbound("SM1")), inbound("SM2")) == ["InboundMessageReceived"]


def test_each_message_moves_the_window() -> None:
    later = NOW + timedelta(hours=30)
    state = given(inbound("SM1"), inbound("SM2"), at=later)
    assert state.window_open_until == later + timedelta(hours=24)


@pytest.mark.parametrize(
    "word", ["STOP", "stop", " Stop! ", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",
             "PARAR", "Sair", "cancelar", "BAJA"],
)  # fmt: skip
def test_opt_out_keywords(word: str) -> None:
    assert when(given(inbound("SM0")), inbound(body=word)) == [
        "InboundMessageReceived",
        "ContactOptedOut",
    ]
    assert given(inbound(body=word)).opted_out


@pytest.mark.parametrize("word", ["START", "yes", "UNSTOP", "Voltar"])
def test_opt_in_keywords_only_matter_when_opted_out(word: str) -> None:
    assert when(given(inbound("SM0", "STOP")), inbound(body=word)) == [
        "InboundMessageReceived",
        "ContactOptedIn",
    ]
    assert when(given(inbound("SM0")), inbound(body=word)) == ["InboundMessageReceived"]


def test_keywords_must_be_the_whole_message() -> None:
    assert keyword("please stop sending") is None
    assert keyword("não") is None
    assert keyword("párar") == ("opt_out", "PARAR")


def test_opted_out_twice_is_one_event() -> None:
    assert when(given(inbound("SM0", "STOP")), inbound(body="STOP")) == ["InboundMessageReceived"]


@pytest.mark.parametrize(
    ("history", "incoming", "expected"),
    [
        ([], "sent", ["DeliveryStatusChanged"]),
        (["sent"], "delivered", ["DeliveryStatusChanged"]),
        (["delivered"], "sent", []),
        (["read"], "delivered", []),
        (["sent"], "sent", []),
        (["sent"], "undelivered", ["DeliveryStatusChanged"]),
        (["failed"], "delivered", []),
        (["delivered"], "failed", []),
        (["queued"], "accepted", []),
        ([], "receiving", []),
        (["sent"], "partially_delivered", ["DeliveryStatusChanged"]),
    ],
)
def test_status_only_moves_forward(
    history: Sequence[str], incoming: str, expected: list[str]
) -> None:
    state = given(inbound(), *[status(value) for value in history])
    assert when(state, status(incoming)) == expected


def test_failure_keeps_its_error_code() -> None:
    state = given(inbound(), status("sent"))
    command = status("undelivered").model_copy(update={"error_code": "63016"})
    (event,) = conv.decide(state, command, conv.Context(uuid.uuid4(), NOW))
    assert event.type == "DeliveryStatusChanged"
    assert event.model_dump()["error_code"] == "63016"


def test_handoff_lifecycle() -> None:
    assert when(given(inbound()), REQUEST) == ["HandoffRequested"]
    assert when(given(inbound(), REQUEST), HANDOFF) == ["ConversationHandedOff"]
    assert when(given(inbound()), HANDOFF) == ["ConversationHandedOff"]
    assert when(given(inbound(), HANDOFF), RETURN) == ["ConversationReturnedToBot"]
    assert when(given(inbound(), REQUEST), RETURN) == ["ConversationReturnedToBot"]
    assert given(inbound(), HANDOFF).state == "human"


@pytest.mark.parametrize(
    ("history", "command", "code"),
    [
        ([], HANDOFF, "unknown_conversation"),
        ([], CLOSE, "unknown_conversation"),
        ([inbound(), HANDOFF], HANDOFF, "invalid_state_human"),
        ([inbound(), HANDOFF], REQUEST, "invalid_state_human"),
        ([inbound()], RETURN, "invalid_state_bot"),
        ([inbound(), CLOSE], CLOSE, "invalid_state_closed"),
        ([inbound(), CLOSE], HANDOFF, "invalid_state_closed"),
        ([inbound(), CLOSE], RETURN, "invalid_state_closed"),
        ([inbound(), REQUEST], REQUEST, "invalid_state_handoff_requested"),
    ],
)
def test_guards(
    history: list[conv.ConversationCommand], command: conv.ConversationCommand, code: str
) -> None:
    assert rejected(given(*history), command) == code


def test_closing_then_writing_again_reopens_for_the_bot() -> None:
    state = given(inbound("SM1"), HANDOFF, CLOSE)
    assert when(state, inbound("SM2")) == ["ConversationReopened", "InboundMessageReceived"]
    assert given(inbound("SM1"), HANDOFF, CLOSE, inbound("SM2")).state == "bot"


def test_send_policy() -> None:
    assert when(given(inbound()), bot()) == ["OutboundMessageRequested"]
    assert rejected(given(inbound(), HANDOFF), bot()) == "not_owned_by_bot"
    assert rejected(given(inbound(), REQUEST), bot()) == "not_owned_by_bot"
    assert when(given(inbound(), HANDOFF), human()) == ["OutboundMessageRequested"]
    assert rejected(given(inbound()), human()) == "not_owned_by_human"
    assert rejected(given(inbound(), CLOSE), bot()) == "conversation_closed"
    assert rejected(given(inbound(body="STOP")), bot()) == "contact_opted_out"
    assert rejected(given(inbound(body="STOP")), bot(None, TEMPLATE)) == "contact_opted_out"


def test_outside_the_window_only_templates_go_out() -> None:
    late = NOW + timedelta(hours=24, seconds=1)
    assert rejected(given(inbound()), bot(), at=late) == "outside_service_window"
    assert when(given(inbound()), bot(None, TEMPLATE), at=late) == ["OutboundMessageRequested"]


def test_decisions_are_deterministic() -> None:
    state, command_id = given(inbound()), uuid.uuid4()
    first = conv.decide(state, bot(), conv.Context(command_id, NOW))
    assert first == conv.decide(state, bot(), conv.Context(command_id, NOW))


def test_a_send_is_judged_when_it_reaches_the_log_not_when_it_was_issued() -> None:
    state = given(inbound())
    issued = NOW + timedelta(hours=23, minutes=59)
    late = conv.Context(uuid.uuid4(), issued, latest=NOW + timedelta(hours=24, minutes=5))
    with pytest.raises(Rejected) as caught:
        conv.decide(state, bot(), late)
    assert caught.value.code == "outside_service_window"


def test_the_window_never_shrinks_when_messages_are_decided_out_of_order() -> None:
    later = NOW + timedelta(hours=5)
    state = given(inbound("SM2"), at=later)
    for event in conv.decide(state, inbound("SM1"), conv.Context(uuid.uuid4(), NOW)):
        state = conv.evolve(state, event)
    assert state.window_open_until == later + timedelta(hours=24)
