"""Hypothesis drives registrations through failures, crashes, duplicates and late deliveries.

Whatever happens, every registration ends complete (reservation held, user active, membership,
invitation) or with nothing at all, and an e-mail address never has two users.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from commands.registration import StartRegistration, invitation_id_of, user_id_of
from commands.registration_saga import (
    Saga,
    SagaCommand,
    evolve,
    forward_step,
    give_up,
    next_step,
    start,
)
from commands.tenant_lifecycle import ReactivateTenant, SuspendTenant
from events.registration import PLATFORM_TENANT_ID
from tests.identity_world import World, registration_id, start_registration, tenant_id

pytestmark = pytest.mark.unit
TENANTS: Final = (tenant_id(0), tenant_id(1))
EMAILS: Final = ("ana@example.com", "bia@example.com")

registrations = st.lists(
    st.tuples(st.sampled_from(range(2)), st.sampled_from(range(2)),
              st.sampled_from(["owner", "admin", "operator", "viewer"])),
    min_size=1, max_size=4,
)  # fmt: skip
actions = st.lists(
    st.one_of(
        st.tuples(st.just("step"), st.integers(0, 3)),  # the saga issues its next command
        st.tuples(st.just("hold"), st.integers(0, 3)),  # ... which stays in flight for now
        st.tuples(st.just("deliver"), st.integers(0, 50)),  # an in-flight one, maybe again
        st.tuples(st.just("crash"), st.integers(0, 3)),  # the saga process restarts
        # The runner's timeout rule: the forward step in flight counts as failed, in the
        # process's memory only (a crash forgets it), while the step may still be decided.
        st.tuples(st.just("give_up"), st.integers(0, 3)),
        st.tuples(st.just("suspend"), st.integers(0, 1)),  # a failure for the next steps
        st.tuples(st.just("reactivate"), st.integers(0, 1)),
        # A decider forgets the command ids it saw (a re-delivery beyond its memory): the
        # deciders' own idempotency must hold then.
        st.tuples(st.just("forget"), st.integers(0, 2)),
    ),
    max_size=60,
)


@dataclass
class Driver:
    """The saga process: its folded state (lost on a crash), and commands in flight."""

    world: World
    specs: list[tuple[UUID, UUID]]
    cursor: dict[UUID, int] = field(default_factory=dict)
    sagas: dict[UUID, Saga] = field(default_factory=dict)
    in_flight: list[SagaCommand] = field(default_factory=list)
    start_commands: dict[UUID, StartRegistration] = field(default_factory=dict)

    def saga(self, rid: UUID) -> Saga:
        """Folded incrementally, as a long-running process would."""
        state, seen = self.sagas.get(rid, Saga(rid)), self.cursor.get(rid, 0)
        for event in self.world.log[seen:]:
            state = evolve(state, event)
        self.sagas[rid], self.cursor[rid] = state, len(self.world.log)
        return state

    def crash(self, rid: UUID) -> None:
        self.sagas.pop(rid, None)
        self.cursor.pop(rid, None)

    def give_up(self, index: int) -> bool:
        """Give up the registration's forward step, if it is waiting for one."""
        rid, _ = self.specs[index % len(self.specs)]
        saga = self.saga(rid)
        steps = next_step(saga)
        step = forward_step(steps[0].command.type) if steps else None
        if step is None:
            return False
        self.sagas[rid] = give_up(saga, step, f"timeout: no outcome of {step}")
        return True

    def next(self, index: int) -> list[SagaCommand]:
        rid, tenant = self.specs[index % len(self.specs)]
        saga = self.saga(rid)
        if saga.started is None and saga.refused is None:
            return [start(tenant, self.start_commands[rid])]
        return next_step(saga)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registrations, actions)
def test_every_registration_ends_complete_or_leaves_nothing(
    specs: list[tuple[int, int, str]], script: list[tuple[str, int]]
) -> None:
    w = World()
    for tenant in TENANTS:
        w.register_tenant(tenant)
    rids = [registration_id(i) for i in range(len(specs))]
    driver = Driver(w, [(rid, TENANTS[t]) for rid, (_, t, _) in zip(rids, specs, strict=True)])
    for rid, (e, _, role) in zip(rids, specs, strict=True):
        driver.start_commands[rid] = start_registration(rid, EMAILS[e], role)
    failed_ever = False
    for action, n in script:
        match action:
            case "step":
                for command in driver.next(n):
                    w.issue(command)
                    driver.in_flight.append(command)
            case "hold":
                driver.in_flight += driver.next(n)
            case "deliver" if driver.in_flight:
                w.issue(driver.in_flight[n % len(driver.in_flight)])
            case "crash":
                driver.crash(rids[n % len(rids)])
            case "give_up":
                failed_ever = driver.give_up(n) or failed_ever
            case "suspend":
                failed_ever = True
                w.submit(TENANTS[n], SuspendTenant(reason="unpaid"))
            case "reactivate":
                w.submit(TENANTS[n], ReactivateTenant())
            case "forget":
                w.book([*TENANTS, PLATFORM_TENANT_ID][n]).recent_commands.clear()
    # From here the process runs undisturbed (late deliveries still arrive) until all is settled.
    for _ in range(12):
        for command in list(driver.in_flight):
            w.issue(command)
        for index in range(len(rids)):
            for command in driver.next(index):
                w.issue(command)
    _check(w, driver, specs, rids, failed_ever)


def _check(
    w: World, driver: Driver, specs: list[tuple[int, int, str]], rids: list[UUID],
    failed_ever: bool,
) -> None:  # fmt: skip
    directory = w.book(PLATFORM_TENANT_ID).directory
    for rid, (e, t, role) in zip(rids, specs, strict=True):
        saga, book = driver.saga(rid), w.book(TENANTS[t])
        assert saga == w.saga(rid), "a restarted process folds to the same state"
        assert saga.status in {"completed", "failed", "refused"}, (rid, saga)
        uid = user_id_of(rid)
        user = book.identity.users.get(uid)
        membership = book.identity.memberships.get(uid)
        invitation = book.identity.invitations.get(invitation_id_of(rid))
        if saga.status == "completed":
            assert directory.holders.get(EMAILS[e]) == rid
            assert user is not None
            assert user.active
            assert user.email == EMAILS[e]
            assert membership is not None
            assert membership.role == role
            assert invitation is not None
            assert not invitation.revoked
        else:
            assert rid not in directory.holders.values()
            assert user is None or not user.active
            assert membership is None
            assert invitation is None or invitation.revoked
    for e, email in enumerate(EMAILS):
        active = [
            uid for book in w.books.values() for uid, user in book.identity.users.items()
            if user.email == email and user.active
        ]  # fmt: skip
        wanted = [rid for rid, spec in zip(rids, specs, strict=True) if spec[0] == e]
        assert len(active) <= 1, f"two users for {email}"
        if wanted and not failed_ever:
            assert len(active) == 1, f"no user for {email} though nothing failed"
