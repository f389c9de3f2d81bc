"""The registration saga, driven through real tenant books: the forward path, a failure at each
step undone in reverse order, a crash at each point resumed from the log, one user per e-mail."""

from __future__ import annotations

from uuid import UUID

import pytest

from commands.registration import invitation_id_of, user_id_of
from commands.registration_saga import Saga, command_id, next_step, start
from commands.tenant_lifecycle import ReactivateTenant, SuspendTenant
from events.identity import UserCreated
from events.registration import PLATFORM_TENANT_ID, STEPS, UserRegistrationFailed
from tests.identity_world import World, registration_id, start_registration, tenant_id

pytestmark = pytest.mark.unit
T0, T1 = tenant_id(0), tenant_id(1)
R0, R1, R2 = registration_id(0), registration_id(1), registration_id(2)
EMAIL = "ana@example.com"
FORWARD = ["ReserveEmail", "CreateUser", "AddMembership", "IssueInvitation", "CompleteRegistration"]


def world() -> World:
    found = World()
    found.register_tenant(T0)
    found.register_tenant(T1)
    return found


def complete(w: World, rid: UUID, tenant: UUID) -> bool:
    saga, book = w.saga(rid), w.book(tenant)
    uid = user_id_of(saga.registration_id)
    return (
        saga.status == "completed"
        and saga.started is not None
        and w.book(PLATFORM_TENANT_ID).directory.holders.get(saga.started.email) == rid
        and book.identity.users[uid].active
        and uid in book.identity.memberships
        and not book.identity.invitations[invitation_id_of(saga.registration_id)].revoked
    )


def nothing_left(w: World, saga: Saga, tenant: UUID) -> bool:
    book = w.book(tenant)
    uid = user_id_of(saga.registration_id)
    user = book.identity.users.get(uid)
    invitation = book.identity.invitations.get(invitation_id_of(saga.registration_id))
    return (
        saga.registration_id not in w.book(PLATFORM_TENANT_ID).directory.holders.values()
        and (user is None or not user.active)
        and uid not in book.identity.memberships
        and (invitation is None or invitation.revoked)
    )


def test_forward_path_ends_with_a_complete_user() -> None:
    w = world()
    w.begin(T0, start_registration(R0, " Ana@Example.COM "))
    assert w.run(R0) == FORWARD
    assert complete(w, R0, T0)
    assert w.book(PLATFORM_TENANT_ID).directory.holders == {EMAIL: R0}
    assert w.book(T0).identity.users[user_id_of(R0)].email == EMAIL
    assert w.book(T0).identity.registrations[R0].phase == "completed"


@pytest.mark.parametrize(
    ("step", "undo"),
    [
        ("reserve_email", ["CompensateRegistration", "ReleaseEmail", "FailRegistration"]),
        ("create_user", ["CompensateRegistration", "ReleaseEmail", "FailRegistration"]),
        ("add_membership",
         ["CompensateRegistration", "DisableUser", "ReleaseEmail", "FailRegistration"]),
        ("issue_invitation",
         ["CompensateRegistration", "RemoveMembership", "DisableUser", "ReleaseEmail",
          "FailRegistration"]),
    ],
)  # fmt: skip
def test_a_failure_at_each_step_is_undone_in_reverse_order(step: str, undo: list[str]) -> None:
    w = world()
    if step == "reserve_email":  # the address is someone else's: a real email_taken
        w.begin(T1, start_registration(R1, EMAIL))
        w.run(R1)
    w.begin(T0, start_registration(R0, EMAIL))
    done = STEPS.index(step)
    for _ in range(done):
        (command,) = next_step(w.saga(R0))
        w.issue(command)
    if step != "reserve_email":  # suspending the tenant makes the next step a real rejection
        w.submit(T0, SuspendTenant(reason="unpaid"))
    assert w.run(R0) == [FORWARD[done], *undo]
    saga = w.saga(R0)
    assert saga.status == "failed"
    assert saga.failure is not None
    assert saga.failure[0] == step
    assert nothing_left(w, saga, T0)
    assert w.book(T0).identity.registrations[R0].phase == "failed"
    (failed,) = [e for e in w.log if isinstance(e, UserRegistrationFailed)]
    expected = "email_taken" if step == "reserve_email" else "tenant_suspended"
    assert (failed.failed_step, failed.reason.split(":")[0]) == (step, expected)
    if step == "reserve_email":
        assert complete(w, R1, T1)  # the other registration keeps what it won


@pytest.mark.parametrize("crash_after", range(len(FORWARD) + 1))
def test_a_crash_at_any_point_resumes_from_the_log_and_repeats_nothing(crash_after: int) -> None:
    w = world()
    w.begin(T0, start_registration(R0, EMAIL))
    last = None
    for _ in range(crash_after):
        (last,) = next_step(w.saga(R0))
        w.issue(last)
    # The process dies; the command it sent last may be delivered again, then it resumes.
    if last is not None:
        assert w.issue(last) == []
    assert w.begin(T0, start_registration(R0, EMAIL)) == []
    assert w.run(R0) == FORWARD[crash_after:]
    assert complete(w, R0, T0)
    assert sum(isinstance(e, UserCreated) for e in w.log) == 1


def test_compensation_resumes_after_a_crash_and_runs_while_the_tenant_is_suspended() -> None:
    w = world()
    w.begin(T0, start_registration(R0, EMAIL))
    for _ in range(3):
        (command,) = next_step(w.saga(R0))
        w.issue(command)
    w.submit(T0, SuspendTenant(reason="unpaid"))
    for _ in range(3):  # rejected invitation, compensating, membership removed
        (command,) = next_step(w.saga(R0))
        w.issue(command)
        assert w.issue(command) == []  # delivered twice
    assert w.saga(R0).status == "compensating"
    assert w.run(R0) == ["DisableUser", "ReleaseEmail", "FailRegistration"]
    assert nothing_left(w, w.saga(R0), T0)


@pytest.mark.parametrize("tenants", [(T0, T0), (T0, T1)], ids=["same-tenant", "two-tenants"])
def test_two_registrations_of_one_email_make_one_user(tenants: tuple[UUID, UUID]) -> None:
    w = world()
    first, second = tenants
    w.begin(first, start_registration(R0, EMAIL))
    w.begin(second, start_registration(R1, EMAIL.upper()))
    # Interleaved: both reserve before either goes on.
    for rid in (R1, R0):
        (command,) = next_step(w.saga(rid))
        w.issue(command)
    w.run(R0)
    w.run(R1)
    assert complete(w, R1, second)
    assert w.saga(R0).status == "failed"
    assert nothing_left(w, w.saga(R0), first)
    assert sum(isinstance(e, UserCreated) for e in w.log) == 1


def test_a_released_email_can_be_registered_again_but_never_by_the_failed_registration() -> None:
    w = world()
    w.begin(T0, start_registration(R0, EMAIL))
    w.issue(next_step(w.saga(R0))[0])
    w.submit(T0, SuspendTenant(reason="unpaid"))
    w.run(R0)
    w.submit(T0, ReactivateTenant())
    reserve = w.book(PLATFORM_TENANT_ID).directory
    assert EMAIL not in reserve.holders
    assert R0 in reserve.released
    w.begin(T1, start_registration(R2, EMAIL))
    assert w.run(R2) == FORWARD
    assert complete(w, R2, T1)


def test_a_refused_start_leaves_nothing_and_issues_nothing() -> None:
    w = world()
    w.submit(T0, SuspendTenant(reason="unpaid"))
    w.begin(T0, start_registration(R0, EMAIL))
    saga = w.saga(R0)
    assert (saga.status, saga.refused, next_step(saga)) == ("refused", "tenant_suspended", [])
    assert w.book(PLATFORM_TENANT_ID).directory.holders == {}


def test_command_ids_are_fixed_by_registration_and_step() -> None:
    command = start(T0, start_registration(R0, EMAIL))
    assert command.command_id == command_id(R0, "start")
    assert start(T0, start_registration(R0, EMAIL)) == command
    assert command_id(R0, "create_user") != command_id(R1, "create_user")
    assert command_id(R0, "create_user") != command_id(R0, "add_membership")
