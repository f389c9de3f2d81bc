"""Sending as the decider and the sender's policy see it: results, 63016 fallback, splitting."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given as for_all
from hypothesis import strategies as st

from commands import conversation as conv
from commands.errors import Rejected
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.operator import RequestOutboundMessage
from commands.send import BODY_LIMIT, Blocked, RecordSendResult, SendPlan, plan_send, split_body
from events.conversation import (
    ConversationEvent,
    DeliveryStatusChanged,
    OutboundMessageRequested,
    OutboundMessageSent,
)
from events.tenant import Template
from streams.rate import Gcra

pytestmark = pytest.mark.unit
TENANT = uuid.UUID("00000000-0000-4000-8000-0000000000aa")
CONTACT = "whatsapp:+5511988887777"
SENDER = "whatsapp:+14155238886"
CID = conv.conversation_id(TENANT, CONTACT)
NOW = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
WINDOW = Template(purpose="window_closed", content_sid="HX" + "b" * 32, variables={"1": "Ana"})


def ctx(template: Template | None = None, at: datetime = NOW) -> conv.Context:
    return conv.Context(uuid.uuid4(), at, window_template=template)


def run(
    state: conv.Conversation, command: conv.ConversationCommand, context: conv.Context
) -> tuple[conv.Conversation, list[ConversationEvent]]:
    events = conv.decide(state, command, context)
    for event in events:
        state = conv.evolve(state, event)
    return state, events


def requested() -> tuple[conv.Conversation, str]:
    """A conversation with one inbound message and one bot reply requested (not yet sent)."""
    state, _ = run(conv.Conversation(CID), ReceiveInboundMessage(
        message_sid="SMin", account_sid="AC1", contact=CONTACT, sender=SENDER, body="Oi"
    ), ctx())  # fmt: skip
    state, events = run(state, RequestOutboundMessage(conversation_id=CID, author="bot",
                                                      body="Olá!"), ctx())  # fmt: skip
    (request,) = events
    assert isinstance(request, OutboundMessageRequested)
    return state, request.outbound_id


def result(outbound_id: str, outcome: str = "sent", **fields: object) -> RecordSendResult:
    defaults: dict[str, object] = {"message_sids": ["SM" + "1" * 32]} if outcome == "sent" else {}
    return RecordSendResult.model_validate(
        {"conversation_id": CID, "outbound_id": outbound_id, "outcome": outcome,
         **defaults, **fields}
    )  # fmt: skip


def callback(sid: str, value: str, code: str | None = None) -> RecordDeliveryStatus:
    return RecordDeliveryStatus(message_sid=sid, account_sid="AC1", status=value,
                                contact=CONTACT, sender=SENDER, error_code=code)  # fmt: skip


def test_a_result_is_recorded_once_and_names_the_sids_for_later_callbacks() -> None:
    state, oid = requested()
    state, events = run(state, result(oid), ctx())
    assert [e.type for e in events] == ["OutboundMessageSent"]
    with pytest.raises(Rejected) as second:
        conv.decide(state, result(oid, "failed", error_code="21211"), ctx())
    assert second.value.code == "send_already_recorded"
    _, events = run(state, callback("SM" + "1" * 32, "delivered"), ctx())
    (changed,) = events
    assert isinstance(changed, DeliveryStatusChanged)
    assert changed.outbound_id == oid


def test_a_result_for_an_unknown_message_is_refused() -> None:
    state, _ = requested()
    with pytest.raises(Rejected) as refused:
        conv.decide(state, result("no-such-outbound"), ctx())
    assert refused.value.code == "unknown_outbound"


@pytest.mark.parametrize(
    ("fields", "event"),
    [
        ({"outcome": "failed", "error_code": "21211"}, "OutboundMessageFailed"),
        ({"outcome": "blocked", "reason": "opted_out"}, "OutboundMessageBlocked"),
    ],
)
def test_failed_and_blocked_results(fields: dict[str, object], event: str) -> None:
    state, oid = requested()
    outcome = str(fields.pop("outcome"))
    _, events = run(state, result(oid, outcome, **fields), ctx())
    assert [e.type for e in events] == [event]


def test_a_result_must_be_complete() -> None:
    with pytest.raises(ValueError, match="SID"):
        result("x", "sent", message_sids=[])
    with pytest.raises(ValueError, match="error code"):
        result("x", "failed")
    with pytest.raises(ValueError, match="reason"):
        result("x", "blocked")


def test_a_callback_before_the_result_is_not_lost() -> None:
    state, oid = requested()
    sid = "SM" + "1" * 32
    state, _ = run(state, callback(sid, "delivered"), ctx())
    _, events = run(state, result(oid, message_sids=[sid]), ctx())
    (sent,) = events
    assert isinstance(sent, OutboundMessageSent)
    assert sent.status == "delivered"


def test_a_failure_callback_before_the_result_keeps_its_code() -> None:
    state, oid = requested()
    sid = "SM" + "1" * 32
    state, _ = run(state, callback(sid, "undelivered", "63018"), ctx())
    _, events = run(state, result(oid, message_sids=[sid]), ctx())
    (sent,) = events
    assert isinstance(sent, OutboundMessageSent)
    assert (sent.status, sent.error_code) == ("undelivered", "63018")


def test_63016_sends_the_window_template_once() -> None:
    state, oid = requested()
    sid = "SM" + "1" * 32
    state, _ = run(state, result(oid, message_sids=[sid]), ctx(WINDOW))
    state, events = run(state, callback(sid, "undelivered", "63016"), ctx(WINDOW))
    assert [e.type for e in events] == ["DeliveryStatusChanged", "OutboundMessageRequested"]
    fallback = events[1]
    assert isinstance(fallback, OutboundMessageRequested)
    assert fallback.fallback_for == oid
    assert fallback.content_sid == WINDOW.content_sid
    assert fallback.content_variables == {"1": "Ana"}
    assert fallback.body is None
    # The same failure reported again changes nothing; the fallback failing gets no fallback.
    assert conv.decide(state, callback(sid, "undelivered", "63016"), ctx(WINDOW)) == []
    fb_sid = "SM" + "2" * 32
    state, _ = run(state, result(fallback.outbound_id, message_sids=[fb_sid]), ctx(WINDOW))
    _, events = run(state, callback(fb_sid, "failed", "63016"), ctx(WINDOW))
    assert [e.type for e in events] == ["DeliveryStatusChanged"]


def test_63016_before_the_result_falls_back_when_the_result_comes() -> None:
    state, oid = requested()
    sid = "SM" + "1" * 32
    state, events = run(state, callback(sid, "failed", "63016"), ctx(WINDOW))
    assert [e.type for e in events] == ["DeliveryStatusChanged"]  # whose message: not known yet
    _, events = run(state, result(oid, message_sids=[sid]), ctx(WINDOW))
    assert [e.type for e in events] == ["OutboundMessageSent", "OutboundMessageRequested"]


@pytest.mark.parametrize("why", ["no template", "opted out", "other code", "was a template"])
def test_no_fallback(why: str) -> None:
    state, oid = requested()
    sid = "SM" + "1" * 32
    template = None if why == "no template" else WINDOW
    content = WINDOW.content_sid if why == "was a template" else None
    state, _ = run(state, result(oid, message_sids=[sid], content_sid=content), ctx(template))
    if why == "opted out":
        state, _ = run(state, ReceiveInboundMessage(message_sid="SMstop", account_sid="AC1",
                                                    contact=CONTACT, sender=SENDER, body="STOP"),
                       ctx(template))  # fmt: skip
    code = "63018" if why == "other code" else "63016"
    _, events = run(state, callback(sid, "undelivered", code), ctx(template))
    assert [e.type for e in events] == ["DeliveryStatusChanged"]


def request(author: str = "bot", **fields: object) -> OutboundMessageRequested:
    return OutboundMessageRequested.model_validate(
        {"conversation_id": CID, "outbound_id": "o1", "author": author, "contact": CONTACT,
         "sender": SENDER, "body": "Olá", **fields}
    )  # fmt: skip


OPEN = NOW + timedelta(hours=1)


def test_policy_blocks_an_opted_out_contact_before_anything_else() -> None:
    plan = plan_send(request(), opted_out=True, state="bot", window_open_until=OPEN, now=NOW,
                     window_template=WINDOW)  # fmt: skip
    assert isinstance(plan, Blocked)
    assert plan.reason == "opted_out"


def test_policy_stops_the_bot_once_a_human_took_over_but_not_the_human() -> None:
    blocked = plan_send(request(), opted_out=False, state="human", window_open_until=OPEN,
                        now=NOW, window_template=None)  # fmt: skip
    assert isinstance(blocked, Blocked)
    assert blocked.reason == "human_took_over"
    allowed = plan_send(request("human"), opted_out=False, state="human",
                        window_open_until=OPEN, now=NOW, window_template=None)  # fmt: skip
    assert allowed == SendPlan(parts=("Olá",))
    # The bot's goodbye decided with its own close or hand-off still goes out.
    for state in ("closed", "handoff_requested"):
        assert isinstance(plan_send(request(), opted_out=False, state=state,
                                    window_open_until=OPEN, now=NOW, window_template=None),
                          SendPlan)  # fmt: skip


def test_policy_outside_the_window_sends_the_template_or_blocks() -> None:
    closed = NOW - timedelta(seconds=1)
    plan = plan_send(request(), opted_out=False, state="bot", window_open_until=closed, now=NOW,
                     window_template=WINDOW)  # fmt: skip
    assert plan == SendPlan(content_sid=WINDOW.content_sid, content_variables={"1": "Ana"})
    blocked = plan_send(request(), opted_out=False, state="bot", window_open_until=closed,
                        now=NOW, window_template=None)  # fmt: skip
    assert isinstance(blocked, Blocked)
    assert blocked.reason == "outside_service_window"
    own = request(body=None, content_sid="HX" + "c" * 32)
    assert plan_send(own, opted_out=False, state="bot", window_open_until=None, now=NOW,
                     window_template=None) == SendPlan(content_sid="HX" + "c" * 32)  # fmt: skip


@for_all(st.text(alphabet=st.sampled_from("ab \n\u00e9\U0001f600"), max_size=5000),
         st.integers(min_value=2, max_value=BODY_LIMIT))  # fmt: skip
def test_split_keeps_every_character_in_order_within_the_limit(text: str, limit: int) -> None:
    parts = split_body(text, limit)
    assert "".join(parts) == text
    assert all(0 < len(p) <= limit for p in parts) or parts == ("",)


def test_split_cuts_at_a_space_or_line_break() -> None:
    text = ("palavra " * 300).strip()
    parts = split_body(text)
    assert len(parts) == 2
    assert len(parts[0]) <= BODY_LIMIT
    assert parts[0].endswith(" ")
    assert split_body("curto") == ("curto",)


def test_gcra_spaces_calls_after_the_burst() -> None:
    now = [0.0]
    bucket = Gcra(rate=2.0, burst=2.0, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.5, 1.0]
    now[0] = 10.0  # a quiet spell refills the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.5]
