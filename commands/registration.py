"""A registration as its tenant's decider sees it ("registration:<id>"): started, then completed,
or compensating and finally failed.

The saga (`commands.registration_saga`) drives it; these decisions keep it honest: forward steps
are accepted only while it is open, so a late or repeated step can never add to a registration
that is being undone, and it can only complete or fail when the tenant's side agrees.
"""

from __future__ import annotations

from typing import Final, Literal, assert_never
from uuid import UUID, uuid5

from pydantic import AwareDatetime, Field

from commands.errors import Rejected
from commands.identity import (
    Identity,
    Registration,
    require_active_tenant,
    require_rank,
    require_tenant,
)
from commands.tenant import TenantProfile
from events.identity import Email, PasswordHash, Role, TokenSha256
from events.registration import (
    RegistrationEvent,
    Step,
    UserRegistrationCompensating,
    UserRegistrationCompleted,
    UserRegistrationFailed,
    UserRegistrationStarted,
)
from events.registry import Message


class StartRegistration(Message):
    """Make someone a member: the API hashed the password and the invitation token already."""

    type: Literal["StartRegistration"] = "StartRegistration"
    schema_version: Literal[1] = 1
    registration_id: UUID
    email: Email
    role: Role
    password_hash: PasswordHash | None = None
    invitation_token_sha256: TokenSha256
    invitation_expires_at: AwareDatetime
    by: UUID | None = Field(default=None, description="The inviting user; None: the platform.")


class CompensateRegistration(Message):
    type: Literal["CompensateRegistration"] = "CompensateRegistration"
    schema_version: Literal[1] = 1
    registration_id: UUID
    failed_step: Step
    reason: str = Field(min_length=1)


class CompleteRegistration(Message):
    type: Literal["CompleteRegistration"] = "CompleteRegistration"
    schema_version: Literal[1] = 1
    registration_id: UUID


class FailRegistration(Message):
    type: Literal["FailRegistration"] = "FailRegistration"
    schema_version: Literal[1] = 1
    registration_id: UUID


type RegistrationCommand = (
    StartRegistration | CompensateRegistration | CompleteRegistration | FailRegistration
)
REGISTRATION_COMMANDS: Final = (
    StartRegistration, CompensateRegistration, CompleteRegistration, FailRegistration,
)  # fmt: skip


def user_id_of(registration_id: UUID) -> UUID:
    return uuid5(registration_id, "user")


def invitation_id_of(registration_id: UUID) -> UUID:
    return uuid5(registration_id, "invitation")


def open_registration(identity: Identity, registration_id: UUID) -> Registration:
    found = _registration(identity, registration_id)
    if found.phase != "open":
        raise Rejected("registration_closed", f"registration {registration_id} is {found.phase}")
    return found


def decide(
    identity: Identity, tenant_id: UUID, tenant: TenantProfile | None, command: RegistrationCommand
) -> list[RegistrationEvent]:
    require_tenant(tenant)
    rid = command.registration_id
    match command:
        case StartRegistration():
            found = identity.registrations.get(rid)
            if found is not None:
                if (found.started.email, found.started.role) == (command.email, command.role):
                    return []
                raise Rejected("registration_exists", f"registration {rid} exists")
            require_active_tenant(tenant)
            require_rank(identity, command.by, command.role)
            fields = command.model_dump(exclude={"type", "schema_version", "by"})
            return [UserRegistrationStarted(**fields, tenant_id=tenant_id, user_id=user_id_of(rid),
                                            invitation_id=invitation_id_of(rid),
                                            invited_by=command.by)]  # fmt: skip
        case CompensateRegistration():
            found = _registration(identity, rid)
            if found.phase == "completed":
                raise Rejected("registration_completed", "a completed registration stays")
            if found.phase != "open":
                return []  # the first failure is the one that counts
            return [UserRegistrationCompensating(registration_id=rid,
                                                 failed_step=command.failed_step,
                                                 reason=command.reason)]  # fmt: skip
        case CompleteRegistration():
            found = _registration(identity, rid)
            if found.phase == "completed":
                return []
            open_registration(identity, rid)
            if _left_behind(identity, found) != {"user", "membership", "invitation"}:
                raise Rejected("registration_incomplete", "a step has not happened yet")
            return [UserRegistrationCompleted(registration_id=rid, user_id=found.started.user_id)]
        case FailRegistration():
            found = _registration(identity, rid)
            if found.phase == "failed":
                return []
            if found.phase != "compensating" or found.failed_step is None:
                raise Rejected(f"registration_{found.phase}", "only a compensated one can fail")
            if _left_behind(identity, found):
                raise Rejected("compensation_pending", "the registration's steps are not undone")
            return [UserRegistrationFailed(registration_id=rid, failed_step=found.failed_step,
                                           reason=found.reason)]  # fmt: skip
        case _:
            assert_never(command)


def _registration(identity: Identity, registration_id: UUID) -> Registration:
    found = identity.registrations.get(registration_id)
    if found is None:
        raise Rejected("unknown_registration", f"no registration {registration_id}")
    return found


def _left_behind(identity: Identity, found: Registration) -> set[str]:
    """What of the registration's work stands on the tenant's side right now."""
    started = found.started
    user = identity.users.get(started.user_id)
    invitation = identity.invitations.get(started.invitation_id)
    membership = identity.memberships.get(started.user_id)
    left = set()
    if user is not None and user.active:
        left.add("user")
    if membership is not None and membership.registration_id == started.registration_id:
        left.add("membership")
    if invitation is not None and not invitation.revoked:
        left.add("invitation")
    return left
