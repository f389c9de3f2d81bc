"""Agent turns in the conversation state machine: given events / when RecordAgentTurn / then.

At most one outcome per (conversation, triggering message), so a turn run again after a crash
never sends twice; a turn that comes back after the conversation moved on is discarded.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given as given_examples
from hypothesis import strategies as st

from commands import conversation as conv
from commands.agent import RecordAgentTurn
from commands.errors import Rejected
from events.conversation import (
    AgentReplied,
    AgentTurnDiscarded,
    OutboundMessageRequested,
    ToolCall,
)
from tests.unit.test_conversation import (
    CID,
    CLOSE,
    HANDOFF,
    NOW,
    RETURN,
    given,
    inbound,
    rejected,
    when,
)

pytestmark = pytest.mark.unit
HASH = "0f" * 32


def turn(trigger: str = "SM1", reply: str | None = "Olá! Como posso ajudar?",
         **extra: Any) -> RecordAgentTurn:  # fmt: skip
    fields: dict[str, Any] = {
        "conversation_id": CID, "turn_id": f"turn-{trigger}", "trigger_message_sid": trigger,
        "agent": "llm", "model": "gpt-4o-mini", "prompt_hash": HASH, "reply": reply,
        "tokens_in": 900, "tokens_out": 40, "latency_ms": 1200,
    }  # fmt: skip
    return RecordAgentTurn(**(fields | extra))


def tool(name: str, accepted: bool = True, **arguments: object) -> ToolCall:
    return ToolCall(name=name, arguments=arguments, accepted=accepted)


def test_a_turn_becomes_the_record_and_the_reply() -> None:
    state = given(inbound("SM1"))
    events = conv.decide(state, turn(), conv.Context(uuid.uuid4(), NOW))
    assert [e.type for e in events] == ["AgentReplied", "OutboundMessageRequested"]
    replied, send = events
    assert isinstance(replied, AgentReplied)
    assert isinstance(send, OutboundMessageRequested)
    assert (send.author, send.body, send.contact) == (
        "bot",
        "Olá! Como posso ajudar?",
        state.contact,
    )
    assert replied.outbound_id == send.outbound_id
    assert (replied.model, replied.tokens_in, replied.tokens_out) == ("gpt-4o-mini", 900, 40)


def test_a_turn_is_recorded_once_per_triggering_message() -> None:
    state = given(inbound("SM1"), turn())
    assert rejected(state, turn()) == "turn_already_recorded"
    assert rejected(state, turn(turn_id="another-run")) == "turn_already_recorded"


def test_a_turn_needs_a_known_conversation_and_message() -> None:
    assert rejected(given(), turn()) == "unknown_conversation"
    assert rejected(given(inbound("SM1")), turn("SM9")) == "unknown_trigger"


def test_a_human_took_over_meanwhile() -> None:
    assert when(given(inbound("SM1"), HANDOFF), turn()) == ["AgentTurnDiscarded"]
    # ... and the discard is the message's outcome: the same turn again is refused.
    assert rejected(given(inbound("SM1"), HANDOFF, turn()), turn()) == "turn_already_recorded"


def test_the_contact_opted_out_meanwhile() -> None:
    assert when(given(inbound("SM1"), inbound("SM2", "STOP")), turn("SM2")) == [
        "AgentTurnDiscarded"
    ]


def test_a_message_that_arrived_during_the_turn_does_not_silence_it() -> None:
    """The runner runs one turn per conversation at a time: the first message is answered,
    then the second gets a turn of its own (with the first reply in its history)."""
    state = given(inbound("SM1"), inbound("SM2"))
    assert when(state, turn("SM1")) == ["AgentReplied", "OutboundMessageRequested"]
    assert when(given(inbound("SM1"), inbound("SM2"), turn("SM1")), turn("SM2")) == [
        "AgentReplied", "OutboundMessageRequested",
    ]  # fmt: skip


def test_a_turn_built_on_a_reply_that_was_not_sent_is_discarded() -> None:
    """A pipelined turn (ADR 0014) was given the previous turn's reply before that turn was
    decided. A human took over, so the previous turn was discarded, and handed back before this
    one was decided: this reply was written after a message the customer never got."""
    state = given(inbound("SM1"), inbound("SM2"), HANDOFF, turn("SM1"), RETURN)
    assert when(state, turn("SM2", builds_on=["SM1"])) == ["AgentTurnDiscarded"]
    (discard,) = conv.decide(state, turn("SM2", builds_on=["SM1"]),
                             conv.Context(uuid.uuid4(), NOW))  # fmt: skip
    assert isinstance(discard, AgentTurnDiscarded)
    assert discard.reason == "built_on_discarded"
    # Built on a reply that was sent, or on nothing undecided: recorded as ever.
    sent = given(inbound("SM1"), inbound("SM2"), turn("SM1"))
    assert when(sent, turn("SM2", builds_on=["SM1"]))[0] == "AgentReplied"
    assert when(state, turn("SM2"))[0] == "AgentReplied"
    # ... and a turn built on one whose command never got an outcome is not sent either.
    assert when(given(inbound("SM1"), inbound("SM2")), turn("SM2", builds_on=["SM1"])) == [
        "AgentTurnDiscarded"
    ]


def test_a_late_turn_for_an_older_message_is_superseded() -> None:
    """A turn re-run after a restart comes back after a newer message was answered."""
    state = given(inbound("SM1"), inbound("SM2"), turn("SM2"))
    assert when(state, turn("SM1")) == ["AgentTurnDiscarded"]


def test_handoff_and_close_tools() -> None:
    state = given(inbound("SM1"))
    handoff = turn(tool_calls=[tool("handoff_to_human", reason="quer um humano")])
    assert when(state, handoff) == ["AgentReplied", "OutboundMessageRequested", "HandoffRequested"]
    assert given(inbound("SM1"), handoff).state == "handoff_requested"
    close = turn(reply=None, tool_calls=[tool("close_conversation", reason="resolvido")])
    assert when(state, close) == ["AgentReplied", "ConversationClosed"]
    refused = turn(tool_calls=[tool("handoff_to_human", accepted=False)])
    assert when(state, refused) == ["AgentReplied", "OutboundMessageRequested"]


def test_a_fallback_hands_off() -> None:
    fallback = turn(reply="Um atendente já vai falar com você.", fallback_reason="llm_unavailable")
    assert when(given(inbound("SM1")), fallback) == [
        "AgentReplied", "OutboundMessageRequested", "HandoffRequested",
    ]  # fmt: skip
    assert given(inbound("SM1"), fallback).state == "handoff_requested"


def test_a_turn_decided_after_the_window_closed_is_discarded_as_its_outcome() -> None:
    late = NOW + timedelta(hours=25)
    assert when(given(inbound("SM1")), turn(), late) == ["AgentTurnDiscarded"]
    # ... so the message has its outcome: the same turn again is refused, never re-asked.
    state = given(inbound("SM1"))
    for event in conv.decide(state, turn(), conv.Context(uuid.uuid4(), late)):
        state = conv.evolve(state, event)
    assert rejected(state, turn(), late) == "turn_already_recorded"


def test_returned_to_the_bot_the_next_message_gets_a_turn() -> None:
    state = given(inbound("SM1"), HANDOFF, RETURN, inbound("SM2"))
    assert when(state, turn("SM2")) == ["AgentReplied", "OutboundMessageRequested"]
    assert when(given(inbound("SM1"), CLOSE, inbound("SM2")), turn("SM2"))[0] == "AgentReplied"


@given_examples(st.lists(st.sampled_from(["SM1", "SM2", "SM3"]), min_size=1, max_size=12))
def test_never_more_than_one_reply_per_message(attempts: list[str]) -> None:
    """Whatever turns come back, in whatever order and however often: one outcome each."""
    state = given(inbound("SM1"), inbound("SM2"), inbound("SM3"))
    replies: list[str] = []
    for trigger in attempts:
        try:
            events = conv.decide(state, turn(trigger), conv.Context(uuid.uuid4(), NOW))
        except Rejected:
            continue
        for event in events:
            state = conv.evolve(state, event)
            if isinstance(event, AgentReplied):
                replies.append(event.trigger_message_sid)
    assert len(replies) == len(set(replies))
    # Never a reply to an older message once a newer one was answered: in conversation order.
    assert replies == sorted(replies)
