"""The registration saga as a pure process manager: fold what the log says, name the next command.

Forward: reserve the e-mail (platform directory) → create the user → add the membership →
issue the invitation → complete. The first rejected forward step turns it around: mark the
registration compensating (which closes it to late forward steps), then undo in reverse order
what the log shows done (revoke the invitation, remove the membership, disable the user, release
the claim on the e-mail) and fail. The state is only ever folded from events, so a process that
crashed resumes by folding again; every command's id is derived from (registration, step), so
issuing it again after a crash is the same command, which the decider recognises.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal
from uuid import UUID, uuid5

from commands.directory import ReleaseEmail, ReserveEmail
from commands.memberships import AddMembership, RemoveMembership
from commands.registration import (
    CompensateRegistration,
    CompleteRegistration,
    FailRegistration,
    StartRegistration,
    invitation_id_of,
    user_id_of,
)
from commands.users import CreateUser, DisableUser, IssueInvitation, RevokeInvitation
from events.identity import (
    InvitationIssued,
    InvitationRevoked,
    MembershipAdded,
    MembershipRemoved,
    UserCreated,
    UserDisabled,
    UserEnabled,
)
from events.platform import CommandRejected
from events.registration import (
    PLATFORM_TENANT_ID,
    STEPS,
    EmailReservationReleased,
    EmailReserved,
    Step,
    UserRegistrationCompensating,
    UserRegistrationCompleted,
    UserRegistrationFailed,
    UserRegistrationStarted,
)
from events.registry import Message

# Every command the saga issues, by name; the forward steps are `STEPS`.
COMMAND_NAMES: Final = ("start", *STEPS, "complete", "compensate", "revoke_invitation",
                        "remove_membership", "disable_user", "release_email", "fail")  # fmt: skip


def command_id(registration_id: UUID, name: str) -> UUID:
    return uuid5(registration_id, f"registration-saga:{name}")


@dataclass(frozen=True, slots=True)
class SagaCommand:
    """A command to put on `zapflow.commands`, keyed by `tenant_id`, with its fixed id."""

    command_id: UUID
    tenant_id: UUID
    command: Message


@dataclass(frozen=True, slots=True)
class Saga:
    registration_id: UUID
    started: UserRegistrationStarted | None = None
    refused: str | None = None
    """Why StartRegistration was rejected: the registration never began."""
    reservation: Literal["none", "held", "released"] = "none"
    user: Literal["none", "active", "disabled"] = "none"
    membership: bool = False
    invitation: Literal["none", "issued", "revoked"] = "none"
    failure: tuple[Step, str] | None = None
    compensating: bool = False
    outcome: Literal["completed", "failed"] | None = None
    stuck: str | None = None
    """A completion or compensation was rejected: a bug to look at, never retried blindly."""

    @property
    def status(self) -> str:
        """Where it is, for `GET /v1/registrations/{id}`."""
        if self.refused or self.outcome or self.stuck:
            return "refused" if self.refused else (self.outcome or "stuck")
        return "compensating" if self.compensating or self.failure else "running"


def start(tenant_id: UUID, command: StartRegistration) -> SagaCommand:
    """The first command, with the id the saga recognises its rejection by."""
    return SagaCommand(command_id(command.registration_id, "start"), tenant_id, command)


def evolve(saga: Saga, event: Message) -> Saga:
    """Fold any event of the log; those of other registrations leave the saga as it is."""
    rid = saga.registration_id
    uid, iid = user_id_of(rid), invitation_id_of(rid)
    match event:
        case UserRegistrationStarted(registration_id=r) if r == rid:
            # It began after all (an earlier delivery was refused, a later one accepted).
            return replace(saga, started=event, refused=None)
        case EmailReserved(registration_id=r) if r == rid:
            return replace(saga, reservation="held")
        case EmailReservationReleased(registration_id=r) if r == rid:
            return replace(saga, reservation="released")
        case UserCreated(user_id=u) | UserEnabled(user_id=u) if u == uid:
            return replace(saga, user="active")
        case UserDisabled(user_id=u) if u == uid:
            return replace(saga, user="disabled")
        case MembershipAdded(user_id=u) | MembershipRemoved(user_id=u) if u == uid:
            return replace(saga, membership=isinstance(event, MembershipAdded))
        case InvitationIssued(invitation_id=i) if i == iid:
            return replace(saga, invitation="issued")
        case InvitationRevoked(invitation_id=i) if i == iid:
            return replace(saga, invitation="revoked")
        case UserRegistrationCompensating(registration_id=r) if r == rid:
            return replace(saga, compensating=True, failure=(event.failed_step, event.reason))
        case UserRegistrationCompleted(registration_id=r) if r == rid:
            return replace(saga, outcome="completed")
        case UserRegistrationFailed(registration_id=r) if r == rid:
            return replace(saga, outcome="failed")
        case CommandRejected():
            return _rejected(saga, event)
        case _:
            return saga


def _rejected(saga: Saga, event: CommandRejected) -> Saga:
    names = {str(command_id(saga.registration_id, n)): n for n in COMMAND_NAMES}
    name = names.get(event.command_id)
    if name is None or saga.outcome is not None:
        return saga
    if name == "start":
        return saga if saga.started else replace(saga, refused=event.reason_code)
    step = _STEP_NAMED.get(name)
    if step is not None:
        # The first failure counts; a late step rejected once compensation began changes nothing.
        if saga.failure is None and not saga.compensating:
            return replace(saga, failure=(step, f"{event.reason_code}: {event.reason}"))
        return saga
    if name == "complete" and (saga.compensating or saga.failure is not None):
        # Asked for by a process that had not seen the failure: one restarted after its
        # predecessor gave up a step that was then decided late (ADR 0018, amended). The
        # decider refuses it because the registration is being undone, and the undoing goes on.
        return saga
    return replace(saga, stuck=f"{name} rejected: {event.reason_code}")


_STEP_NAMED: Final[dict[str, Step]] = {step: step for step in STEPS}
_FORWARD_TYPES: Final[dict[str, Step]] = {
    "ReserveEmail": "reserve_email", "CreateUser": "create_user",
    "AddMembership": "add_membership", "IssueInvitation": "issue_invitation",
}  # fmt: skip


def forward_step(command_type: str) -> Step | None:
    """The forward step a command of this type performs; None for completion and the
    compensations."""
    return _FORWARD_TYPES.get(command_type)


def give_up(saga: Saga, step: Step, reason: str) -> Saga:
    """A forward step that never got an outcome counts as failed (the runner's timeout rule,
    ADR 0018): the same as its rejection, so the first failure still counts and a registration
    already over or compensating is left as it is."""
    if saga.outcome is not None or saga.failure is not None or saga.compensating:
        return saga
    return replace(saga, failure=(step, reason))


def next_step(saga: Saga) -> list[SagaCommand]:
    """The command(s) to issue now; none when it is over, not yet started, or stuck."""
    started = saga.started
    if started is None or saga.refused or saga.outcome is not None or saga.stuck:
        return []
    rid, tenant, uid = saga.registration_id, started.tenant_id, started.user_id
    if saga.failure is not None:
        return [_compensation(saga, started)]
    name: str
    command: Message
    if saga.reservation == "none":
        name, command = "reserve_email", ReserveEmail(email=started.email, registration_id=rid,
                                                      tenant_id=tenant, user_id=uid)  # fmt: skip
        return [SagaCommand(command_id(rid, name), PLATFORM_TENANT_ID, command)]
    if saga.user == "none":
        name, command = "create_user", CreateUser(user_id=uid, email=started.email,
                                                  password_hash=started.password_hash,
                                                  registration_id=rid)  # fmt: skip
    elif not saga.membership:
        name, command = "add_membership", AddMembership(user_id=uid, role=started.role,
                                                        registration_id=rid)  # fmt: skip
    elif saga.invitation == "none":
        name, command = "issue_invitation", IssueInvitation(
            invitation_id=started.invitation_id, user_id=uid, registration_id=rid,
            token_sha256=started.invitation_token_sha256,
            expires_at=started.invitation_expires_at,
        )  # fmt: skip
    else:
        name, command = "complete", CompleteRegistration(registration_id=rid)
    return [SagaCommand(command_id(rid, name), tenant, command)]


def _compensation(saga: Saga, started: UserRegistrationStarted) -> SagaCommand:
    """Undo in reverse order: first close the registration to late forward steps."""
    assert saga.failure is not None
    rid, tenant, uid = saga.registration_id, started.tenant_id, started.user_id
    name: str
    command: Message
    if not saga.compensating:
        step, reason = saga.failure
        name = "compensate"
        command = CompensateRegistration(registration_id=rid, failed_step=step, reason=reason)
    elif saga.invitation == "issued":
        name, command = (
            "revoke_invitation",
            RevokeInvitation(invitation_id=started.invitation_id, user_id=uid, registration_id=rid),
        )
    elif saga.membership:
        name, command = "remove_membership", RemoveMembership(user_id=uid, registration_id=rid)
    elif saga.user == "active":
        name, command = "disable_user", DisableUser(user_id=uid, registration_id=rid,
                                                    reason="registration failed")  # fmt: skip
    elif saga.reservation != "released":
        name = "release_email"
        release = ReleaseEmail(email=started.email, registration_id=rid)
        return SagaCommand(command_id(rid, name), PLATFORM_TENANT_ID, release)
    else:
        name, command = "fail", FailRegistration(registration_id=rid)
    return SagaCommand(command_id(rid, name), tenant, command)
