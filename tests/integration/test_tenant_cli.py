"""`zapflow tenants ...` on the real broker and PostgreSQL: `create` with the test playing the
projector; the lifecycle commands with the real decider and projector."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition
from fastapi.testclient import TestClient

from api.tokens import derived_admin_token
from commands.catalog import COMMAND_REGISTRY
from commands.tenant import RegisterTenant
from events.envelope import CommandEnvelope, decode_command
from projections.credentials import api_key_sha256, decrypt_secret
from projections.migrations import migrate
from streams import kafka
from streams.topics import COMMANDS
from tests.integration.test_admin_api import records
from tests.integration.test_query_api import Keyed
from tests.integration.test_query_api import platform as platform  # the fixture
from tests.integration.twilio_driver import KEY, PARTITIONS, WAIT_S
from zapflow.cli import main
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints
from zapflow.tenants import (
    TenantNotProjected,
    create_tenant,
    register_command,
    send_command,
    validated,
)

pytestmark = pytest.mark.integration

ACCOUNT = "AC0123456789abcdef0123456789abcdef"
AT = datetime(2026, 12, 3, tzinfo=UTC)


async def registrations(brokers: str) -> list[CommandEnvelope]:
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        partitions = [TopicPartition(COMMANDS, n) for n in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        for _ in range(int(WAIT_S / 0.2)):
            batches = await consumer.getmany(timeout_ms=200)
            found = [decode_command(r.value) for rs in batches.values() for r in rs]
            if found:
                return found
        raise AssertionError("no RegisterTenant command")
    finally:
        await consumer.stop()


async def project(db: asyncpg.Connection, envelope: CommandEnvelope) -> None:
    """What the directory projection writes for the resulting TenantRegistered."""
    command = COMMAND_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    assert isinstance(command, RegisterTenant)
    await db.execute(
        "INSERT INTO tenants (tenant_id, name, twilio_account_sid, twilio_auth_token_encrypted, "
        "api_key_sha256, registered_at, updated_seq) VALUES ($1, $2, $3, $4, $5, now(), 1)",
        envelope.tenant_id,
        command.name,
        command.twilio_account_sid,
        command.twilio_auth_token_encrypted,
        command.api_key_sha256,
    )


async def test_create_sends_register_tenant_and_waits_for_the_directory(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> None:
    await migrate(db)
    tenant = validated("Clínica", ACCOUNT, "tok-123", ["whatsapp:+14155238886"])
    creating = asyncio.create_task(
        create_tenant(tenant, Endpoints(fresh_broker, database_url), KEY, wait_s=WAIT_S)
    )
    (envelope,) = await registrations(fresh_broker)
    assert not creating.done()  # still waiting for the projection
    await project(db, envelope)
    tenant_id, api_key = await asyncio.wait_for(creating, WAIT_S)
    assert envelope.tenant_id == tenant_id
    assert envelope.payload["api_key_sha256"] == api_key_sha256(api_key)
    sealed = envelope.payload["twilio_auth_token_encrypted"]
    assert decrypt_secret(KEY, sealed, tenant_id) == "tok-123"


async def test_create_says_so_when_nothing_projects_the_tenant(
    fresh_broker: str, database_url: str, db: asyncpg.Connection
) -> None:
    await migrate(db)
    tenant = validated("Clínica", ACCOUNT, "tok", ["whatsapp:+14155238886"])
    with pytest.raises(TenantNotProjected, match="are the decider and projector running"):
        await create_tenant(tenant, Endpoints(fresh_broker, database_url), KEY, wait_s=0.5)


async def test_create_refuses_an_unmigrated_database_before_sending(
    fresh_broker: str, database_url: str
) -> None:
    tenant = validated("Clínica", ACCOUNT, "tok", ["whatsapp:+14155238886"])
    with pytest.raises(ConfigurationError, match="no tenants table"):
        await create_tenant(tenant, Endpoints(fresh_broker, database_url), KEY)


async def run_cli(
    capsys: pytest.CaptureFixture[str], *argv: str, parse: bool = True
) -> tuple[int, Any, str]:
    """`zapflow ARGV`: exit code, what it printed (as JSON when `parse`), stderr."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:  # in a thread: the command runs its own event loop
        code = await asyncio.to_thread(main, list(argv))
    finally:  # the command configures logging for a process of its own
        root.handlers[:] = handlers
        root.setLevel(level)
    out, err = capsys.readouterr()
    return code, orjson.loads(out) if parse and out else out, err


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_broker: str, database_url: str
) -> None:
    """Settings of the command: this test's broker, database and secret key."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", fresh_broker)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("ZAPFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("ZAPFLOW_SECRET_KEY", base64.urlsafe_b64encode(KEY).decode())
    monkeypatch.delenv("ZAPFLOW_ADMIN_TOKEN", raising=False)


async def test_lifecycle_commands_go_through_the_log_and_wait_for_the_directory(
    platform: tuple[TestClient, Keyed, Keyed],
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, a, b = platform
    tenant = str(a.tenant.tenant_id)
    code, shown, _ = await run_cli(capsys, "tenants", "suspend", tenant, "--reason", "unpaid")
    assert (code, shown["tenant_id"], shown["suspended"]) == (0, tenant, True)
    code, shown, _ = await run_cli(capsys, "tenants", "show", tenant)
    assert (code, shown["suspended"], shown["senders"]) == (0, True, [a.tenant.sender])
    code, shown, _ = await run_cli(capsys, "tenants", "reactivate", tenant)
    assert (code, shown["suspended"]) == (0, False)
    code, listed, _ = await run_cli(capsys, "tenants", "list")
    assert code == 0
    assert {t["tenant_id"] for t in listed} == {tenant, str(b.tenant.tenant_id)}
    assert not {"twilio_auth_token_encrypted", "api_key_sha256"} & set(listed[0])
    # The decider refuses to remove a tenant's last sender: its reason, exit 1.
    code, _, err = await run_cli(
        capsys, "tenants", "remove-sender", tenant, "--sender", a.tenant.sender
    )
    assert code == 1
    assert "refused by the decider: last_sender" in err


async def test_bad_input_is_an_error_naming_the_option_and_nothing_is_sent(
    cli_env: None,
    fresh_broker: str,
    db: asyncpg.Connection,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await migrate(db)
    tenant = str(uuid.uuid4())
    code, _, err = await run_cli(capsys, "tenants", "suspend", tenant, "--reason", " ")
    assert (code, err.startswith("zapflow: error: --reason=")) == (2, True), err
    monkeypatch.setattr(sys, "stdin", io.StringIO(" spaced-secret \n"))
    code, _, err = await run_cli(
        capsys, "tenants", "rotate-credentials", tenant, "--twilio-account-sid", ACCOUNT,
        "--twilio-auth-token-stdin",
    )  # fmt: skip
    assert code == 2
    assert err.startswith("zapflow: error: --twilio-auth-token=***: ")
    assert "spaced-secret" not in err
    code, _, err = await run_cli(capsys, "tenants", "update", tenant, "--name", "Nova")
    assert (code, err.strip()) == (2, f"zapflow: error: TENANT_ID={tenant}: no such tenant")
    assert await records(fresh_broker, COMMANDS) == []
    # The same reader does see a command that is sent.
    tenant_id, sent = uuid.uuid4(), validated("Nova", ACCOUNT, "t", ["+14155238886"])
    await send_command(fresh_broker, register_command(sent, tenant_id, "a" * 64, KEY, AT), 10)
    assert [decode_command(r).tenant_id for r in await records(fresh_broker, COMMANDS)] == [
        tenant_id
    ]


async def test_admin_token_prints_the_deployments_platform_admin_token(
    cli_env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await run_cli(capsys, "admin", "token", parse=False) == (
        0, derived_admin_token(KEY) + "\n", ""
    )  # fmt: skip
    monkeypatch.setenv("ZAPFLOW_ADMIN_TOKEN", "a" * 40)
    assert await run_cli(capsys, "admin", "token", parse=False) == (0, "a" * 40 + "\n", "")


async def test_rename_and_senders_wait_until_the_directory_shows_them(
    platform: tuple[TestClient, Keyed, Keyed],
    cli_env: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = str(platform[1].tenant.tenant_id)
    code, shown, err = await run_cli(capsys, "tenants", "update", tenant, "--name", "Renomeada")
    assert (code, shown and shown["name"]) == (0, "Renomeada"), err
    code, shown, err = await run_cli(
        capsys, "tenants", "add-sender", tenant, "--sender", "+5511900000001"
    )
    assert (code, shown and "+5511900000001" in shown["senders"]) == (0, True), err
