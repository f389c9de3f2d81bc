"""The registration saga for real: the decider, the projector, the query API and the runner
on the real broker and PostgreSQL (ADR 0018).

A registration started on the log ends with a complete user in the read models; the same
e-mail registered twice at once (by two tenants, or twice by one) ends with one user, the other
registration failed with `email_taken` and undone; a registration whose tenant is suspended
midway (the runner dead meanwhile) ends failed with everything it did undone. Each outcome is
checked through the query API, the read models and the log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from fastapi.testclient import TestClient

from commands.directory import ReserveEmail
from commands.registration import user_id_of
from commands.registration_saga import command_id, start
from commands.tenant_lifecycle import SuspendTenant
from commands.users import CreateUser
from events.envelope import CommandEnvelope, EventEnvelope, encode_command
from events.registration import PLATFORM_TENANT_ID
from events.registry import Message
from streams import kafka
from streams.log import read_all
from streams.registrations import RegistrationOptions, run_registrations
from streams.topics import COMMANDS
from tests.identity_world import ARGON, start_registration
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed, _get, _until
from tests.integration.test_query_api import platform as platform  # the fixture

pytestmark = pytest.mark.integration
OVER = ("completed", "failed")


@asynccontextmanager
async def runner(brokers: str) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_registrations(brokers, stop, RegistrationOptions(10.0, 2)))
    try:
        yield
    finally:
        stop.set()
        await task


async def produce(brokers: str, *envelopes: CommandEnvelope) -> None:
    producer = kafka.producer(brokers)
    await producer.start()
    try:
        for envelope in envelopes:
            key, value, headers = encode_command(envelope)
            await producer.send_and_wait(COMMANDS, value, key=key, headers=headers)
    finally:
        await producer.stop()


def begin(keyed: Keyed, rid: uuid.UUID, email: str) -> CommandEnvelope:
    """`StartRegistration` as the API will put it on the log (the saga's own command id)."""
    first = start(keyed.tenant.tenant_id, start_registration(rid, email))
    return command_envelope(first.tenant_id, first.command, command_id=first.command_id)


def saga_command(tenant: uuid.UUID, rid: uuid.UUID, name: str, body: Message) -> CommandEnvelope:
    return command_envelope(tenant, body, command_id=command_id(rid, name))


def status(client: TestClient, keyed: Keyed, rid: uuid.UUID) -> Any:
    reply = _get(client, f"/v1/registrations/{rid}", keyed)
    return reply.json() if reply.status_code == 200 else {"http": reply.status_code}


async def ended(client: TestClient, keyed: Keyed, rid: uuid.UUID) -> Any:
    """The registration as the query API shows it once it is over (or after the timeout)."""
    return await _until(lambda: status(client, keyed, rid), lambda s: s.get("status") in OVER)


async def events(brokers: str) -> list[EventEnvelope]:
    consumer = kafka.groupless_consumer(brokers)
    await consumer.start()
    try:
        found = [e async for _, e in read_all(consumer)]
    finally:
        await consumer.stop()
    return list({e.event_id: e for e in found}.values())  # at-least-once duplicates once


def about(found: list[EventEnvelope], rid: uuid.UUID) -> Counter[str]:
    """Event types of a registration's steps (by its user, invitation or registration id)."""
    keys = {str(rid), str(user_id_of(rid))}
    return Counter(e.type for e in found if keys & {str(v) for v in e.payload.values()})


async def person(db: asyncpg.Connection, tenant: uuid.UUID, rid: uuid.UUID) -> dict[str, Any]:
    """What the read models hold of the registration's user (read as the owner)."""
    uid = user_id_of(rid)
    return {
        "active": await db.fetchval("SELECT active FROM users WHERE tenant_id = $1 "
                                    "AND user_id = $2", tenant, uid),
        "member": await db.fetchval("SELECT removed_at IS NULL FROM memberships "
                                    "WHERE tenant_id = $1 AND user_id = $2", tenant, uid),
        "invited": await db.fetchval("SELECT revoked_at IS NULL FROM invitations "
                                     "WHERE tenant_id = $1 AND user_id = $2", tenant, uid),
        "held": await db.fetchval("SELECT held FROM email_directory WHERE registration_id = $1",
                                  rid),
    }  # fmt: skip


async def test_a_registration_ends_with_a_complete_user_in_the_read_models(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> None:
    client, a, b = platform
    rid = uuid.uuid4()
    async with runner(fresh_broker):
        await produce(fresh_broker, begin(a, rid, "Ana@Example.com"))
        found = await ended(client, a, rid)
    assert found["status"] == "completed", found
    assert (found["step"], found["email"], found["role"]) == (None, "ana@example.com", "owner")
    assert status(client, b, rid) == {"http": 404}  # another tenant's key: not there at all
    assert await person(db, a.tenant.tenant_id, rid) == {
        "active": True, "member": True, "invited": True, "held": True,
    }  # fmt: skip
    steps = about(await events(fresh_broker), rid)
    assert steps == Counter({"UserRegistrationStarted": 1, "EmailReserved": 1, "UserCreated": 1,
                             "MembershipAdded": 1, "InvitationIssued": 1,
                             "UserRegistrationCompleted": 1})  # fmt: skip


@pytest.mark.parametrize("tenants", ["two tenants", "one tenant"])
async def test_one_email_registered_twice_at_once_makes_exactly_one_user(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection,
    tenants: str,
) -> None:  # fmt: skip
    client, a, b = platform
    b = a if tenants == "one tenant" else b
    ra, rb = uuid.uuid4(), uuid.uuid4()
    async with runner(fresh_broker):
        await asyncio.gather(produce(fresh_broker, begin(a, ra, "bia@example.com")),
                             produce(fresh_broker, begin(b, rb, "BIA@example.com ")))  # fmt: skip
        ends = [await ended(client, k, r) for k, r in ((a, ra), (b, rb))]
    assert sorted(e["status"] for e in ends) == ["completed", "failed"], ends
    (lost,) = [e for e in ends if e["status"] == "failed"]
    assert lost["failed_step"] == "reserve_email"
    assert lost["reason"].startswith("email_taken")
    won_rid = ra if ends[0]["status"] == "completed" else rb
    lost_tenant, lost_rid = (b, rb) if won_rid == ra else (a, ra)
    assert await person(db, lost_tenant.tenant.tenant_id, lost_rid) == {
        "active": None, "member": None, "invited": None, "held": None,
    }  # fmt: skip
    active = await db.fetch("SELECT user_id FROM users WHERE email = 'bia@example.com' AND active")
    assert [r["user_id"] for r in active] == [user_id_of(won_rid)]
    found = await events(fresh_broker)
    assert about(found, lost_rid)["UserCreated"] == 0
    assert about(found, lost_rid)["EmailReservationReleased"] == 1
    assert about(found, won_rid)["EmailReserved"] == 1


async def test_a_tenant_suspended_midway_fails_the_registration_and_undoes_it(
    platform: tuple[TestClient, Keyed, Keyed], fresh_broker: str, db: asyncpg.Connection
) -> None:
    """The runner died after the user was created; the tenant was suspended meanwhile: the
    next step is refused, and everything the registration did is undone."""
    client, a, _ = platform
    tenant, rid, email = a.tenant.tenant_id, uuid.uuid4(), "caio@example.com"
    uid = user_id_of(rid)
    await produce(fresh_broker, begin(a, rid, email))
    await _until(lambda: status(client, a, rid), lambda s: s.get("role") == "owner")
    reserve = ReserveEmail(email=email, registration_id=rid, tenant_id=tenant, user_id=uid)
    create = CreateUser(user_id=uid, email=email, password_hash=ARGON, registration_id=rid)
    await produce(
        fresh_broker,
        saga_command(PLATFORM_TENANT_ID, rid, "reserve_email", reserve),
        saga_command(tenant, rid, "create_user", create),
        command_envelope(tenant, SuspendTenant(reason="unpaid invoice")),
    )
    midway = await _until(
        lambda: status(client, a, rid), lambda s: s.get("step") == "add_membership"
    )
    assert midway["status"] == "started", midway
    for _ in range(100):
        if await db.fetchval("SELECT suspended FROM tenants WHERE tenant_id = $1", tenant):
            break
        await asyncio.sleep(0.1)
    async with runner(fresh_broker):
        found = await ended(client, a, rid)
    assert found["status"] == "failed", found
    assert found["failed_step"] == "add_membership"
    assert found["reason"].startswith("tenant_suspended")
    assert await person(db, tenant, rid) == {
        "active": False, "member": None, "invited": None, "held": False,
    }  # fmt: skip
    steps = about(await events(fresh_broker), rid)
    assert steps == Counter({
        "UserRegistrationStarted": 1, "EmailReserved": 1, "UserCreated": 1,
        "UserRegistrationCompensating": 1, "UserDisabled": 1, "EmailReservationReleased": 1,
        "UserRegistrationFailed": 1,
    })  # fmt: skip
