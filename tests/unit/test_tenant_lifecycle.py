"""A tenant's lifecycle through the decider's tenant book: given events, when command, then events.

And what suspension means for the conversation commands: no messages in, nothing out, while
Twilio's reports of what already happened are still recorded.
"""

from __future__ import annotations

from typing import Final

import pytest

from commands.agent import RecordAgentTurn
from commands.agent_config import ConfigureAgent
from commands.inbound import ReceiveInboundMessage, RecordDeliveryStatus
from commands.operator import RequestOutboundMessage
from commands.send import RecordSendResult
from commands.tenant import RegisterTenant
from commands.tenant_lifecycle import (
    AddWhatsAppSender,
    ReactivateTenant,
    RemoveWhatsAppSender,
    RotateTwilioCredentials,
    SuspendTenant,
    UpdateTenantSettings,
)
from events.conversation import AgentTurnDiscarded, OutboundMessageRequested
from events.registration import PLATFORM_TENANT_ID
from events.tenant import AgentSettings, Template
from tests.identity_world import World, sha, tenant_id

pytestmark = pytest.mark.unit
T: Final = tenant_id(0)
SENDER: Final = "whatsapp:+14155238886"
CONTACT: Final = "whatsapp:+5511988887777"
ACCOUNT: Final = f"AC{T.hex}"


def registered() -> World:
    w = World()
    w.register_tenant(T)
    return w


def inbound(sid: str, account: str = ACCOUNT) -> ReceiveInboundMessage:
    return ReceiveInboundMessage(message_sid=sid, account_sid=account, contact=CONTACT,
                                 sender=SENDER, body="Oi")  # fmt: skip


def test_every_lifecycle_command_needs_a_registered_tenant() -> None:
    w = World()
    for command in (UpdateTenantSettings(name="X"), SuspendTenant(reason="r"), ReactivateTenant()):
        assert w.outcome(T, command) == ["rejected:unknown_tenant"]


def test_settings_and_senders_change_once_and_repeating_records_nothing() -> None:
    w = registered()
    assert w.outcome(T, UpdateTenantSettings(name="Clínica Sol")) == ["TenantSettingsUpdated"]
    assert w.outcome(T, UpdateTenantSettings(name="Clínica Sol")) == []
    assert w.outcome(T, AddWhatsAppSender(sender="+5511900001111")) == ["WhatsAppSenderAdded"]
    assert w.outcome(T, AddWhatsAppSender(sender="+5511900001111")) == []
    assert w.outcome(T, RemoveWhatsAppSender(sender="+5511900001111")) == ["WhatsAppSenderRemoved"]
    profile = w.book(T).profile
    assert profile is not None
    assert profile.name == "Clínica Sol"
    assert profile.senders == {SENDER}


def test_a_sender_not_ours_or_the_last_one_cannot_be_removed() -> None:
    w = registered()
    assert w.outcome(T, RemoveWhatsAppSender(sender="+5511900001111")) == [
        "rejected:unknown_sender"
    ]
    assert w.outcome(T, RemoveWhatsAppSender(sender=SENDER)) == ["rejected:last_sender"]


def test_rotated_credentials_decide_which_account_inbound_messages_must_come_from() -> None:
    w = registered()
    new_account = "AC" + "f" * 32
    rotate = RotateTwilioCredentials(twilio_account_sid=new_account,
                                     twilio_auth_token_encrypted="sealed-2")  # fmt: skip
    assert w.outcome(T, rotate) == ["TwilioCredentialsRotated"]
    assert w.outcome(T, inbound("SM1")) == ["rejected:tenant_mismatch"]
    assert w.outcome(T, inbound("SM2", new_account)) == [
        "ConversationStarted", "InboundMessageReceived",
    ]  # fmt: skip


def test_suspension_is_idempotent_and_reactivation_lifts_it() -> None:
    w = registered()
    assert w.outcome(T, ReactivateTenant()) == []
    assert w.outcome(T, SuspendTenant(reason="unpaid")) == ["TenantSuspended"]
    assert w.outcome(T, SuspendTenant(reason="again")) == []
    profile = w.book(T).profile
    assert profile is not None
    assert profile.suspended
    assert w.outcome(T, ReactivateTenant()) == ["TenantReactivated"]
    assert w.outcome(T, inbound("SM1")) == ["ConversationStarted", "InboundMessageReceived"]


def test_a_suspended_tenant_takes_no_messages_and_sends_nothing() -> None:
    w = registered()
    assert w.outcome(T, inbound("SM1")) == ["ConversationStarted", "InboundMessageReceived"]
    cid = next(iter(w.book(T).conversations))
    w.submit(T, SuspendTenant(reason="unpaid"))
    assert w.outcome(T, inbound("SM2")) == ["rejected:tenant_suspended"]
    send = RequestOutboundMessage(conversation_id=cid, author="bot", body="Olá")
    assert w.outcome(T, send) == ["rejected:tenant_suspended"]
    turn = RecordAgentTurn(conversation_id=cid, turn_id="t1", trigger_message_sid="SM1",
                           agent="faq", model="faq", prompt_hash="0" * 64, reply="Olá")  # fmt: skip
    # A turn is an outcome that sends nothing (a rejection would have the runner ask again).
    (discarded,) = w.submit(T, turn)
    assert isinstance(discarded, AgentTurnDiscarded)
    assert discarded.reason == "tenant_suspended"
    # What Twilio reports about messages already out is a fact, recorded all the same.
    status = RecordDeliveryStatus(message_sid="SMx", account_sid=ACCOUNT, status="delivered",
                                  contact=CONTACT, sender=SENDER)  # fmt: skip
    assert w.outcome(T, status) == ["DeliveryStatusChanged"]
    w.submit(T, ReactivateTenant())
    assert w.outcome(T, send) == ["OutboundMessageRequested"]


@pytest.mark.parametrize("suspended", [False, True])
def test_no_template_fallback_goes_out_for_a_suspended_tenant(suspended: bool) -> None:
    w = registered()
    template = Template(purpose="window_closed", content_sid="HX" + "a" * 32)
    w.submit(T, ConfigureAgent(settings=AgentSettings(system_prompt="p", templates=[template])))
    w.submit(T, inbound("SM1"))
    cid = next(iter(w.book(T).conversations))
    (requested,) = w.submit(T, RequestOutboundMessage(conversation_id=cid, author="bot", body="Oi"))
    assert isinstance(requested, OutboundMessageRequested)
    w.submit(T, RecordSendResult(conversation_id=cid, outbound_id=requested.outbound_id,
                                 outcome="sent", message_sids=["SMout"]))  # fmt: skip
    if suspended:
        w.submit(T, SuspendTenant(reason="unpaid"))
    # Twilio says the window had closed (63016): normally the approved template goes instead.
    closed = RecordDeliveryStatus(message_sid="SMout", account_sid=ACCOUNT, status="failed",
                                  error_code="63016", contact=CONTACT, sender=SENDER)  # fmt: skip
    expected = ["DeliveryStatusChanged"] + ([] if suspended else ["OutboundMessageRequested"])
    assert w.outcome(T, closed) == expected


def test_the_platform_id_is_never_a_tenant() -> None:
    w = World()
    register = RegisterTenant(name="P", twilio_account_sid=ACCOUNT, senders=[SENDER],
                              twilio_auth_token_encrypted="x", api_key_sha256=sha("k"))  # fmt: skip
    assert w.outcome(PLATFORM_TENANT_ID, register) == ["rejected:reserved_tenant_id"]
