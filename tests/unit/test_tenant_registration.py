"""`zapflow tenants create`: input validation and the `RegisterTenant` command it sends."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from commands.catalog import COMMAND_REGISTRY
from commands.tenant import NewTenant, RegisterTenant
from projections.credentials import decrypt_secret
from zapflow.errors import ConfigurationError
from zapflow.tenants import register_command, validated

pytestmark = pytest.mark.unit

ACCOUNT = "AC0123456789abcdef0123456789ABCDEF"
KEY = bytes(range(32))


def test_valid_input_is_kept_and_repeated_senders_collapse() -> None:
    tenant = validated(
        " Clínica ", ACCOUNT, "tok", ["whatsapp:+14155238886", "+5511987654321", "+5511987654321"]
    )
    assert tenant == NewTenant(
        "Clínica", ACCOUNT, "tok", ("whatsapp:+14155238886", "+5511987654321")
    )
    assert "tok" not in repr(tenant)


@pytest.mark.parametrize(
    ("name", "account", "token", "senders", "option"),
    [
        ("", ACCOUNT, "tok", ["+14155238886"], "--name"),
        ("N", "AC123", "tok", ["+14155238886"], "--twilio-account-sid"),
        ("N", "XX0123456789abcdef0123456789abcdef", "tok", ["+14155238886"], "--twilio-account"),
        ("N", ACCOUNT, "", ["+14155238886"], "--twilio-auth-token"),
        ("N", ACCOUNT, " secret-token", ["+14155238886"], "--twilio-auth-token"),
        ("N", ACCOUNT, "tok", [], "--sender"),
        ("N", ACCOUNT, "tok", ["14155238886"], "--sender"),
        ("N", ACCOUNT, "tok", ["whatsapp:+0123"], "--sender"),
        ("N", ACCOUNT, "tok", ["sms:+14155238886"], "--sender"),
    ],
)
def test_bad_input_names_the_option_and_never_echoes_the_token(
    name: str, account: str, token: str, senders: list[str], option: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        validated(name, account, token, senders)
    assert str(caught.value).startswith(option)
    assert "secret-token" not in str(caught.value)


def test_the_command_carries_the_token_sealed_for_this_tenant_only() -> None:
    tenant_id = uuid.uuid4()
    tenant = validated("Clínica", ACCOUNT, "tok-123", ["whatsapp:+14155238886"])
    at = datetime(2026, 11, 25, tzinfo=UTC)
    envelope = register_command(tenant, tenant_id, "a" * 64, KEY, at)
    command = COMMAND_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    assert isinstance(command, RegisterTenant)
    assert "tok-123" not in envelope.model_dump_json()
    assert decrypt_secret(KEY, command.twilio_auth_token_encrypted, tenant_id) == "tok-123"
    assert (command.senders, command.api_key_sha256) == (["whatsapp:+14155238886"], "a" * 64)
    assert (envelope.tenant_id, envelope.issued_at) == (tenant_id, at)
    assert register_command(tenant, tenant_id, "a" * 64, KEY, at).command_id == (
        envelope.command_id
    )
