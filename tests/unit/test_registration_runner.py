"""The registration runner's shell logic against real tenant books: what it issues and when.

The decider side is `tests.identity_world.World` (real routing, deciders, sealing and command-id
recognition); the outlet decides every envelope the runner sends, unless the test loses it, as
a broker, a dead-lettered command or a decider that never answers would.
"""

from __future__ import annotations

from collections.abc import Collection
from uuid import UUID

import pytest

from commands.catalog import COMMAND_REGISTRY
from commands.registration import user_id_of
from commands.registration_saga import command_id
from events.envelope import CommandEnvelope
from events.registration import PLATFORM_TENANT_ID
from streams.registrations import RegistrationOptions, RegistrationRunner
from tests.identity_world import World, registration_id, start_registration, tenant_id

pytestmark = pytest.mark.unit
T0, T1 = tenant_id(0), tenant_id(1)
R0, R1 = registration_id(0), registration_id(1)
EMAIL = "ana@example.com"
TIMEOUT_S, REISSUES = 10.0, 2


class Outlet:
    """Decides what the runner sends, in the order sent; loses commands of `lose` types."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.sent: list[CommandEnvelope] = []
        self.decided = 0
        self.lose: Collection[str] = ()

    async def __call__(self, envelope: CommandEnvelope) -> None:
        self.sent.append(envelope)

    def decide(self) -> None:
        for envelope in self.sent[self.decided :]:
            if envelope.type not in self.lose:
                body = COMMAND_REGISTRY.decode(envelope.type, envelope.schema_version,
                                               envelope.payload)  # fmt: skip
                self.world.submit(envelope.tenant_id, body, envelope.command_id)
        self.decided = len(self.sent)


class Harness:
    """A runner (with a hand-set clock), the world it reads, and its outlet."""

    def __init__(self, found: World) -> None:
        self.world = found
        self.outlet = Outlet(found)
        self.now = 0.0
        self.seen = 0
        self.runner = self.fresh()

    def fresh(self) -> RegistrationRunner:
        """A runner that (re)starts: it has read nothing yet."""
        self.seen = 0
        self.runner = RegistrationRunner(self.outlet, RegistrationOptions(TIMEOUT_S, REISSUES),
                                         lambda: self.now)  # fmt: skip
        return self.runner

    def fold(self) -> None:
        for envelope in self.world.envelopes[self.seen :]:
            self.runner.fold(envelope)
        self.seen = len(self.world.envelopes)

    async def rounds(self, count: int = 20, step_s: float = 0.0) -> None:
        """Fold what is new, tick, decide what was sent; `count` times, `step_s` apart."""
        for _ in range(count):
            self.fold()
            if not self.runner.caught_up:
                self.runner.caught_up_with_log()
            await self.runner.tick()
            self.outlet.decide()
            self.now += step_s

    def sent(self, rid: UUID) -> list[str]:
        return [e.type for e in self.outlet.sent if e.correlation_id == rid]


def world() -> World:
    found = World()
    found.register_tenant(T0)
    found.register_tenant(T1)
    return found


FORWARD = ["ReserveEmail", "CreateUser", "AddMembership", "IssueInvitation", "CompleteRegistration"]
UNDO = ["CompensateRegistration", "RevokeInvitation", "RemoveMembership", "DisableUser",
        "ReleaseEmail", "FailRegistration"]  # fmt: skip


async def test_a_registration_runs_forward_with_fixed_ids_and_times_from_the_log() -> None:
    h = Harness(world())
    h.world.begin(T0, start_registration(R0, EMAIL))
    await h.rounds()
    assert h.sent(R0) == FORWARD
    assert h.world.saga(R0).status == "completed"
    recorded = {e.event_id: e.recorded_at for e in h.world.envelopes}
    for envelope in h.outlet.sent:
        name = {"ReserveEmail": "reserve_email", "CreateUser": "create_user",
                "AddMembership": "add_membership", "IssueInvitation": "issue_invitation",
                "CompleteRegistration": "complete"}[envelope.type]  # fmt: skip
        assert envelope.command_id == command_id(R0, name)
        assert envelope.tenant_id == (PLATFORM_TENANT_ID if name == "reserve_email" else T0)
        # Issued at the recorded time of the event that made it due, never the clock's.
        assert envelope.issued_at in recorded.values()
    first = h.outlet.sent[0]
    started = next(e for e in h.world.envelopes if e.type == "UserRegistrationStarted")
    assert first.issued_at == started.recorded_at


async def test_nothing_is_issued_before_the_catch_up_and_a_restart_issues_only_the_next_step() -> (
    None
):
    h = Harness(world())
    h.world.begin(T0, start_registration(R0, EMAIL))
    h.outlet.lose = {"AddMembership"}
    await h.rounds(3)
    assert h.sent(R0) == ["ReserveEmail", "CreateUser", "AddMembership"]
    h.outlet.lose = ()
    restarted = h.fresh()
    h.fold()
    await restarted.tick()
    assert h.sent(R0)[3:] == []  # still reading the log: nothing yet
    await h.rounds()
    assert h.sent(R0)[3:] == ["AddMembership", "IssueInvitation", "CompleteRegistration"]
    # The same command as before the restart, so the decider would recognise a repeat.
    assert h.outlet.sent[2] == h.outlet.sent[3]


async def test_an_unanswered_step_is_issued_again_then_given_up_and_undone() -> None:
    h = Harness(world())
    h.world.begin(T0, start_registration(R0, EMAIL))
    h.outlet.lose = {"CreateUser"}
    await h.rounds(4)
    assert h.sent(R0) == ["ReserveEmail", "CreateUser"]  # waiting, not repeating every tick
    await h.rounds(40, step_s=TIMEOUT_S / 4)
    creates = [e for e in h.outlet.sent if e.type == "CreateUser"]
    assert len(creates) == 1 + REISSUES
    assert len({(e.command_id, e.issued_at, e.payload == creates[0].payload) for e in creates}) == 1
    assert h.sent(R0)[2 + REISSUES :] == ["CompensateRegistration", "ReleaseEmail",
                                          "FailRegistration"]  # fmt: skip
    saga = h.world.saga(R0)
    assert saga.status == "failed"
    assert saga.failure == ("create_user", f"timeout: no outcome of create_user after "
                                           f"{1 + REISSUES} attempts")  # fmt: skip
    assert R0 not in h.world.book(PLATFORM_TENANT_ID).directory.holders.values()
    # The lost step delivered late cannot add to a registration that failed.
    (late,) = h.world.submit(T0, COMMAND_REGISTRY.decode(creates[0].type, 1, creates[0].payload),
                             creates[0].command_id)  # fmt: skip
    assert late.type == "CommandRejected"
    assert user_id_of(R0) not in h.world.book(T0).identity.users


async def test_undoing_is_never_given_up() -> None:
    h = Harness(world())
    h.world.begin(T0, start_registration(R0, EMAIL))
    await h.rounds()
    h.world.begin(T1, start_registration(R1, EMAIL))  # fails: the address is taken
    h.outlet.lose = {"ReleaseEmail"}
    await h.rounds(60, step_s=TIMEOUT_S / 2)
    releases = h.sent(R1).count("ReleaseEmail")
    assert releases > 1 + REISSUES  # issued again past the limit, never given up
    assert "FailRegistration" not in h.sent(R1)
    h.outlet.lose = ()
    await h.rounds(4, step_s=TIMEOUT_S)
    assert h.world.saga(R1).status == "failed"
    assert h.world.saga(R0).status == "completed"


async def test_a_directory_rejection_read_before_its_registration_still_counts() -> None:
    """The platform partition may be read before the tenant's: `email_taken` is not lost."""
    h = Harness(world())
    h.world.begin(T0, start_registration(R0, EMAIL))
    await h.rounds()
    h.world.begin(T1, start_registration(R1, EMAIL.upper()))
    h.outlet.lose = {"CompensateRegistration"}  # the process dies before it is decided
    await h.rounds(3)
    assert h.sent(R1) == ["ReserveEmail", "CompensateRegistration"]
    platform_first = sorted(h.world.envelopes, key=lambda e: e.tenant_id != PLATFORM_TENANT_ID)
    before = len(h.outlet.sent)
    restarted = h.fresh()
    for envelope in platform_first:
        restarted.fold(envelope)
    restarted.caught_up_with_log()
    await restarted.tick()
    (again,) = h.outlet.sent[before:]
    assert again.type == "CompensateRegistration"
    assert again.payload["reason"].startswith("email_taken")


async def test_a_runner_restarted_after_giving_up_still_undoes_a_step_decided_late() -> None:
    """The give-up lives in the runner's memory until its compensation is decided. A decider
    that lags decides the given-up step late (before the compensation, so it counts and must
    be undone); a runner restarted meanwhile sees the step done and asks to complete, which
    the decider refuses once the registration is compensating. That refusal is the expected
    end of a race, not a stuck registration: the undoing goes on."""
    h = Harness(world())
    h.world.begin(T0, start_registration(R0, EMAIL))
    h.outlet.lose = {"IssueInvitation", "CompensateRegistration"}  # not decided yet
    await h.rounds(40, step_s=TIMEOUT_S / 4)
    assert h.sent(R0)[-1] == "CompensateRegistration"
    invite = next(e for e in h.outlet.sent if e.type == "IssueInvitation")
    compensate = h.outlet.sent[-1]
    restarted = h.fresh()
    h.outlet.lose = ()
    decide(h.world, invite)  # the late decision, before the compensation
    h.fold()
    restarted.caught_up_with_log()
    await restarted.tick()
    assert h.sent(R0)[-1] == "CompleteRegistration"
    decide(h.world, compensate)  # ... which was sent first, so is decided first
    await h.rounds(10, step_s=TIMEOUT_S / 4)
    saga = h.world.saga(R0)
    assert (saga.status, saga.stuck) == ("failed", None)
    assert saga.failure is not None
    assert saga.failure[0] == "issue_invitation"
    assert h.sent(R0)[-5:] == ["RevokeInvitation", "RemoveMembership", "DisableUser",
                               "ReleaseEmail", "FailRegistration"]  # fmt: skip


def decide(found: World, envelope: CommandEnvelope) -> None:
    body = COMMAND_REGISTRY.decode(envelope.type, envelope.schema_version, envelope.payload)
    found.submit(envelope.tenant_id, body, envelope.command_id)
