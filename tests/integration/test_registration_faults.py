"""A failure injected at each forward step of the registration saga, for real (ADR 0018): the
decider, the projector and the runner on the real broker and PostgreSQL.

Two kinds of failure at each of the four steps, both produced by the system, not faked:
- rejected: the decider refuses the step for a business reason that holds exactly then. The
  address is taken (`reserve_email`; another registration won it first), or the tenant was
  suspended just before the step: the outlet between the runner and the broker sends the
  suspension first, awaited, on the same partition, so the decider decides it first.
- late: the step gets no outcome (the outlet holds it, as a lagging decider or a lost command
  would) until the runner gives it up and turns to compensating; it then reaches the decider
  just before the compensation, so it is decided after all and has to be undone too.

Either way the end is nothing at all, seen in the read models (e-mail released, no active user,
no membership, the invitation revoked or never issued, status failed at that step) and in the
log: each step done and undone once, the undoing in reverse order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Final, Literal

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from commands.registration_saga import COMMAND_NAMES, command_id
from commands.tenant_lifecycle import SuspendTenant
from events.envelope import CommandEnvelope, EventEnvelope
from events.registration import STEPS, Step
from projections.database import connect
from projections.migrations import migrate
from projections.runner import run_projector
from streams import kafka
from streams.decider import run_decider
from streams.log import follow, submit_envelope
from streams.registrations import RegistrationOptions, RegistrationRunner
from streams.topics import EVENTS
from tests.conftest import drop_database, fresh_database
from tests.integration.sender_rig import command_envelope
from tests.integration.test_query_api import Keyed, _keyed, _registration
from tests.integration.test_registration_saga import about, begin, events, person
from zapflow.devbroker import start_dev_broker
from zapflow.setup import ensure_topics_on

pytestmark = pytest.mark.integration
type Kind = Literal["rejected", "late"]
type Outlet = Callable[[CommandEnvelope], Awaitable[None]]
DEADLINE_S: Final = 30.0
OVER: Final = ("completed", "failed")
PATIENT: Final = RegistrationOptions(step_timeout_s=10.0, max_reissues=2)
"""For rejections: no step is issued again or given up while the test runs."""
HASTY: Final = RegistrationOptions(step_timeout_s=1.0, max_reissues=1)
"""For late steps: given up after two attempts, two seconds."""
DONE: Final[dict[Step, str]] = {"reserve_email": "EmailReserved", "create_user": "UserCreated",
                                "add_membership": "MembershipAdded",
                                "issue_invitation": "InvitationIssued"}  # fmt: skip
UNDONE: Final[dict[Step, str]] = {"reserve_email": "EmailReservationReleased",
                                  "create_user": "UserDisabled",
                                  "add_membership": "MembershipRemoved",
                                  "issue_invitation": "InvitationRevoked"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rig:
    """The decider and the projector running on this module's broker and database."""

    brokers: str
    db: asyncpg.Connection
    producer: AIOKafkaProducer

    async def tenant(self) -> Keyed:
        """A tenant of its own (one test suspends it), registered through the log."""
        keyed = _keyed()
        await submit_envelope(self.producer, _registration(keyed))
        for _ in range(int(DEADLINE_S / 0.1)):
            if await self.db.fetchval("SELECT 1 FROM tenants WHERE tenant_id = $1",
                                      keyed.tenant.tenant_id):  # fmt: skip
                return keyed
            await asyncio.sleep(0.1)
        raise AssertionError("the tenant was not projected in time")


@pytest.fixture(scope="module")
async def rig(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    """One platform for the module: each test has tenants and registrations of its own."""
    broker = start_dev_broker(0, tmp_path_factory.mktemp("faults") / "tansu.log")
    url = await fresh_database(server_url)
    db = await connect(url)
    producer = kafka.producer(broker.bootstrap_servers)
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await ensure_topics_on(broker.bootstrap_servers, partitions=12)
        await migrate(db)
        await producer.start()
        tasks += [
            asyncio.create_task(run_decider(broker.bootstrap_servers, stop,
                                            session_timeout_ms=6000)),
            asyncio.create_task(run_projector(broker.bootstrap_servers, url, stop)),
        ]  # fmt: skip
        yield Rig(broker.bootstrap_servers, db, producer)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await producer.stop()
        await db.close()
        await drop_database(server_url, url)
        broker.stop()


@asynccontextmanager
async def runner(rig: Rig, outlet: Outlet, options: RegistrationOptions) -> AsyncIterator[None]:
    """The registration runner, as `zapflow worker registrations` wires it, sending through
    `outlet` instead of straight to the broker."""
    consumer = kafka.groupless_consumer(rig.brokers, max_partition_fetch_bytes=1 << 20)
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(follow(consumer, EVENTS, stop, RegistrationRunner(outlet, options)))
    try:
        yield
    finally:
        stop.set()
        await task
        await consumer.stop()


@dataclass(slots=True)
class Fault:
    """Between the runner and the broker: passes every command on, except one registration's
    `step`, which is rejected (a suspension goes first) or late (held until the undoing)."""

    rig: Rig
    keyed: Keyed
    rid: uuid.UUID
    step: Step
    kind: Kind
    held: CommandEnvelope | None = None
    suspended: bool = False

    async def __call__(self, envelope: CommandEnvelope) -> None:
        if envelope.command_id == command_id(self.rid, self.step):
            if self.kind == "late":
                self.held = self.held or envelope  # no outcome: issued again, then given up
                return
            if self.step != "reserve_email" and not self.suspended:
                suspend = SuspendTenant(reason="injected before " + self.step)
                await self.pass_on(command_envelope(self.keyed.tenant.tenant_id, suspend))
                self.suspended = True
        if envelope.command_id == command_id(self.rid, "compensate") and self.held is not None:
            await self.pass_on(self.held)  # at last: decided just before the compensation
            self.held = None
        await self.pass_on(envelope)

    async def pass_on(self, envelope: CommandEnvelope) -> None:
        await submit_envelope(self.rig.producer, envelope)


async def settled(rig: Rig, keyed: Keyed, rid: uuid.UUID, reservation: str) -> asyncpg.Record:
    """The registration's row once it is over and its reservation is projected as expected
    (the directory is another partition, projected in any order relative to the tenant's)."""
    row = None
    for _ in range(int(DEADLINE_S / 0.1)):
        row = await rig.db.fetchrow("SELECT * FROM registrations WHERE tenant_id = $1 "
                                    "AND registration_id = $2", keyed.tenant.tenant_id,
                                    rid)  # fmt: skip
        if row is not None and row["status"] in OVER and row["reservation"] == reservation:
            return row
        await asyncio.sleep(0.1)
    raise AssertionError(f"registration {rid} not over in time: {row and dict(row)}")


def expected_events(failed: Step, kind: Kind) -> tuple[list[str], list[str]]:
    """The steps the log must show done, and the undoing that must follow, in order."""
    index = STEPS.index(failed) + (1 if kind == "late" else 0)
    done = list(STEPS[:index])
    undo = ["UserRegistrationCompensating"]
    undo += [UNDONE[step] for step in reversed(done) if step != "reserve_email"]
    return [DONE[step] for step in done], [*undo, "EmailReservationReleased",
                                           "UserRegistrationFailed"]  # fmt: skip


def mine(found: list[EventEnvelope], rid: uuid.UUID, kinds: list[str]) -> list[EventEnvelope]:
    """The registration's events of these types, in the order `kinds` names them."""
    by_type: dict[str, list[EventEnvelope]] = {}
    for envelope in found:
        if envelope.type in kinds and about([envelope], rid):
            by_type.setdefault(envelope.type, []).append(envelope)
    assert {kind: len(by_type.get(kind, [])) for kind in kinds} == dict.fromkeys(kinds, 1)
    return [by_type[kind][0] for kind in kinds]


def assert_in_order(ordered: list[EventEnvelope]) -> None:
    """Each one decided after the one before: later in its partition's chain, or (the release
    is on the platform partition) recorded no earlier."""
    for before, after in pairwise(ordered):
        if before.tenant_id == after.tenant_id:
            assert before.tenant_seq < after.tenant_seq, (before.type, after.type)
        assert before.recorded_at <= after.recorded_at, (before.type, after.type)


@pytest.mark.parametrize("kind", ["rejected", "late"])
@pytest.mark.parametrize("step", STEPS)
async def test_a_failure_at_each_step_leaves_nothing_and_is_undone_once_in_reverse_order(
    rig: Rig, step: Step, kind: Kind
) -> None:
    keyed, rival = await rig.tenant(), await rig.tenant()
    rid, email = uuid.uuid4(), f"{kind}.{step}@example.com"
    done, undo = expected_events(step, kind)
    taken = (kind, step) == ("rejected", "reserve_email")
    winners = [uuid.uuid4()] if taken else []
    fault = Fault(rig, keyed, rid, step, kind)
    async with runner(rig, fault, PATIENT if kind == "rejected" else HASTY):
        for won in winners:  # the address is someone else's by the time this one asks
            await submit_envelope(rig.producer, begin(rival, won, email.upper()))
            assert (await settled(rig, rival, won, "held"))["status"] == "completed"
        await submit_envelope(rig.producer, begin(keyed, rid, email))
        row = await settled(rig, keyed, rid, "released" if "EmailReserved" in done else "none")

    reason = {"late": "timeout: no outcome of " + step, "rejected": "tenant_suspended"}[kind]
    reason = "email_taken" if taken else reason
    assert (row["status"], row["failed_step"]) == ("failed", step), dict(row)
    assert row["reason"].startswith(reason), dict(row)
    # Nothing left: the read models.
    tenant = keyed.tenant.tenant_id
    held = await person(rig.db, tenant, rid)
    assert held == {
        "active": False if "UserCreated" in done else None,
        "member": False if "MembershipAdded" in done else None,
        "invited": False if "InvitationIssued" in done else None,
        "held": False if "EmailReserved" in done else None,
    }, held  # fmt: skip
    assert (row["reservation"], row["user_state"], row["membership"], row["invitation"]) == (
        "released" if "EmailReserved" in done else "none",
        "disabled" if "UserCreated" in done else "none",
        False,
        "revoked" if "InvitationIssued" in done else "none",
    ), dict(row)
    holders = await rig.db.fetch("SELECT registration_id FROM email_directory WHERE email = $1 "
                                 "AND held", email)  # fmt: skip
    assert [r["registration_id"] for r in holders] == winners
    active = await rig.db.fetchval("SELECT count(*) FROM users WHERE tenant_id = $1 AND active",
                                   tenant)  # fmt: skip
    assert active == 0
    # Nothing left: the log. Each step done once and undone once, the undoing in reverse order.
    found = await events(rig.brokers)
    assert about(found, rid) == Counter(["UserRegistrationStarted", *done, *undo])
    (failed,) = mine(found, rid, ["UserRegistrationFailed"])
    assert (failed.payload["failed_step"], failed.payload["reason"]) == (step, row["reason"])
    assert_in_order(mine(found, rid, ["UserRegistrationStarted", *done]))
    assert_in_order(mine(found, rid, undo))
    (release,) = mine(found, rid, ["EmailReservationReleased"])
    assert release.payload["was_held"] is ("EmailReserved" in done)
    rejections = [
        e for e in found
        if e.type == "CommandRejected" and e.payload["command_id"] == str(command_id(rid, step))
    ]  # fmt: skip
    if kind == "rejected":
        assert [e.payload["reason_code"] for e in rejections] == [reason]
    else:
        assert rejections == []  # late, not refused: it was decided, then undone
        assert fault.held is None


@dataclass(slots=True)
class Transit:
    """Between a runner and the broker: holds the registration's commands named in `hold`
    (the first of each; issued again, it is the same command) until `release`; and before a
    command named in `after`, passes on the held ones it names."""

    rig: Rig
    rid: uuid.UUID
    hold: set[str] = field(default_factory=set)
    after: dict[str, list[str]] = field(default_factory=dict)
    held: dict[str, CommandEnvelope] = field(default_factory=dict)

    async def __call__(self, envelope: CommandEnvelope) -> None:
        names = {command_id(self.rid, name): name for name in COMMAND_NAMES}
        name = names.get(envelope.command_id)
        if name in self.hold:
            self.held.setdefault(name, envelope)
            return
        for first in self.after.get(name or "", []):
            await self.release(first)
        await submit_envelope(self.rig.producer, envelope)

    async def release(self, name: str) -> None:
        await submit_envelope(self.rig.producer, self.held.pop(name))


async def test_a_runner_restarted_after_giving_up_a_step_still_undoes_it_when_decided_late(
    rig: Rig,
) -> None:
    """A gives up the invitation (no outcome) and sends the compensation; it crashes; the
    decider lags: it decides the invitation, and the compensation only after B, the restarted
    runner (which knows nothing of the give-up), has seen the invitation and asked to complete.
    The decider refuses the completion (the registration is compensating): that must not leave
    the registration half done."""
    keyed = await rig.tenant()
    rid = uuid.uuid4()
    first = Transit(rig, rid, hold={"issue_invitation", "compensate"})
    async with runner(rig, first, HASTY):
        await submit_envelope(rig.producer, begin(keyed, rid, "late.restart@example.com"))
        for _ in range(int(DEADLINE_S / 0.1)):
            if "compensate" in first.held:
                break
            await asyncio.sleep(0.1)
    assert set(first.held) == {"issue_invitation", "compensate"}
    await first.release("issue_invitation")
    second = Transit(rig, rid, after={"complete": ["compensate"]}, held=first.held)
    async with runner(rig, second, PATIENT):
        row = await settled(rig, keyed, rid, "released")
    assert (row["status"], row["failed_step"]) == ("failed", "issue_invitation"), dict(row)
    assert await person(rig.db, keyed.tenant.tenant_id, rid) == {
        "active": False, "member": False, "invited": False, "held": False,
    }  # fmt: skip
    found = await events(rig.brokers)
    done, undo = expected_events("issue_invitation", "late")
    assert about(found, rid) == Counter(["UserRegistrationStarted", *done, *undo])
    assert_in_order(mine(found, rid, undo))
    refused = [e.payload["reason_code"] for e in found if e.type == "CommandRejected"
               and e.payload["command_id"] == str(command_id(rid, "complete"))]  # fmt: skip
    assert refused == ["registration_closed"]  # the race happened as described
