"""The rules the decider holds a registration to, and the platform e-mail directory's rules.

The saga never breaks them; these commands are issued by hand to prove each one holds anyway.
"""

from __future__ import annotations

from typing import Final
from uuid import UUID

import pytest

from commands.directory import ReleaseEmail, ReserveEmail
from commands.registration import (
    CompensateRegistration,
    CompleteRegistration,
    FailRegistration,
    user_id_of,
)
from commands.registration_saga import next_step
from commands.users import CreateUser
from events.registration import PLATFORM_TENANT_ID, EmailReservationReleased
from tests.identity_world import World, registration_id, start_registration, tenant_id

pytestmark = pytest.mark.unit
T: Final = tenant_id(0)
R0, R1 = registration_id(0), registration_id(1)
EMAIL: Final = "ana@example.com"


def reserve(rid: UUID = R0, email: str = EMAIL) -> ReserveEmail:
    return ReserveEmail.model_validate({"email": email, "registration_id": rid, "tenant_id": T,
                                        "user_id": user_id_of(rid)})  # fmt: skip


@pytest.fixture
def w() -> World:
    found = World()
    found.register_tenant(T)
    return found


def test_the_first_claim_wins_case_insensitively_and_repeats_are_no_ops(w: World) -> None:
    assert w.outcome(PLATFORM_TENANT_ID, reserve()) == ["EmailReserved"]
    assert w.outcome(PLATFORM_TENANT_ID, reserve()) == []
    assert w.outcome(PLATFORM_TENANT_ID, reserve(R1, "ANA@example.com ")) == [
        "rejected:email_taken"
    ]


def test_a_release_frees_the_address_and_closes_the_registration_for_good(w: World) -> None:
    w.submit(PLATFORM_TENANT_ID, reserve())
    release = ReleaseEmail(email=EMAIL, registration_id=R0)
    assert w.outcome(PLATFORM_TENANT_ID, release) == ["EmailReservationReleased"]
    assert w.outcome(PLATFORM_TENANT_ID, release) == []
    assert w.outcome(PLATFORM_TENANT_ID, reserve()) == ["rejected:registration_closed"]
    assert w.outcome(PLATFORM_TENANT_ID, reserve(R1)) == ["EmailReserved"]
    # A registration that never got the address lets go all the same: it can never take it.
    never_held = ReleaseEmail(email="bia@example.com", registration_id=registration_id(2))
    released = w.submit(PLATFORM_TENANT_ID, never_held)
    assert [isinstance(e, EmailReservationReleased) and e.was_held for e in released] == [False]
    assert w.book(PLATFORM_TENANT_ID).directory.holders == {EMAIL: R1}


def test_only_the_platform_decides_claims(w: World) -> None:
    assert w.outcome(T, reserve()) == ["rejected:not_platform_directory"]


def test_a_registration_completes_only_when_every_step_is_done(w: World) -> None:
    w.begin(T, start_registration(R0, EMAIL))
    assert w.outcome(T, start_registration(R0, EMAIL)) == []
    assert w.outcome(T, start_registration(R0, "x@example.com")) == ["rejected:registration_exists"]
    assert w.outcome(T, CompleteRegistration(registration_id=R0)) == [
        "rejected:registration_incomplete"
    ]
    assert w.outcome(T, FailRegistration(registration_id=R0)) == ["rejected:registration_open"]
    w.run(R0)
    assert w.outcome(T, CompleteRegistration(registration_id=R0)) == []
    compensate = CompensateRegistration(registration_id=R0, failed_step="create_user", reason="x")
    assert w.outcome(T, compensate) == ["rejected:registration_completed"]
    assert w.outcome(T, CompleteRegistration(registration_id=R1)) == [
        "rejected:unknown_registration"
    ]


def test_once_compensating_no_forward_step_lands_and_it_fails_only_when_undone(w: World) -> None:
    w.begin(T, start_registration(R0, EMAIL))
    w.issue(next_step(w.saga(R0))[0])  # the e-mail is reserved
    compensate = CompensateRegistration(registration_id=R0, failed_step="create_user", reason="x")
    assert w.outcome(T, compensate) == ["UserRegistrationCompensating"]
    assert w.outcome(T, compensate) == []
    late = CreateUser(user_id=user_id_of(R0), email=EMAIL, registration_id=R0)
    assert w.outcome(T, late) == ["rejected:registration_closed"]
    assert w.outcome(T, CompleteRegistration(registration_id=R0)) == [
        "rejected:registration_closed"
    ]
    w.run(R0)
    assert w.saga(R0).status == "failed"
    assert w.outcome(T, FailRegistration(registration_id=R0)) == []


def test_failing_with_work_left_behind_is_refused(w: World) -> None:
    w.begin(T, start_registration(R0, EMAIL))
    for _ in range(2):  # reserved, user created
        w.issue(next_step(w.saga(R0))[0])
    w.submit(T, CompensateRegistration(registration_id=R0, failed_step="add_membership",
                                       reason="x"))  # fmt: skip
    assert w.outcome(T, FailRegistration(registration_id=R0)) == ["rejected:compensation_pending"]
