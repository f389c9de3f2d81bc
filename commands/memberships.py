"""Who belongs to a tenant, in which role: add, remove, change role; a tenant keeps an owner.

Nobody grants or touches a role above their own (`role_not_allowed`), and the last established
owner cannot be removed, demoted or disabled (`last_owner`): a tenant must never lock itself out.
A registration undoing its own membership is exempt, since it restores the state before it.
"""

from __future__ import annotations

from typing import Final, Literal, assert_never
from uuid import UUID

from pydantic import Field

from commands.errors import Rejected
from commands.identity import (
    RANK,
    Identity,
    compensating,
    require_active_tenant,
    require_rank,
    require_tenant,
)
from commands.registration import open_registration
from commands.tenant import TenantProfile
from events.identity import (
    IdentityEvent,
    MembershipAdded,
    MembershipRemoved,
    MembershipRoleChanged,
    Role,
)
from events.registry import Message


class AddMembership(Message):
    type: Literal["AddMembership"] = "AddMembership"
    schema_version: Literal[1] = 1
    user_id: UUID
    role: Role
    by: UUID | None = Field(default=None, description="The acting user; None: the platform.")
    registration_id: UUID | None = Field(
        default=None, description="Set by a registration; it was authorised when it started."
    )


class RemoveMembership(Message):
    type: Literal["RemoveMembership"] = "RemoveMembership"
    schema_version: Literal[1] = 1
    user_id: UUID
    by: UUID | None = None
    registration_id: UUID | None = Field(
        default=None, description="Set by a registration undoing its own membership."
    )


class ChangeRole(Message):
    type: Literal["ChangeRole"] = "ChangeRole"
    schema_version: Literal[1] = 1
    user_id: UUID
    role: Role
    by: UUID | None = None


type MembershipCommand = AddMembership | RemoveMembership | ChangeRole
MEMBERSHIP_COMMANDS: Final = (AddMembership, RemoveMembership, ChangeRole)


def decide(
    identity: Identity, tenant: TenantProfile | None, command: MembershipCommand
) -> list[IdentityEvent]:
    require_tenant(tenant)
    current = identity.memberships.get(command.user_id)
    match command:
        case AddMembership():
            if current is not None:
                if current.role == command.role:
                    return []
                raise Rejected("membership_exists", "already a member: change the role instead")
            if not identity.user(command.user_id).active:
                raise Rejected("user_disabled", f"user {command.user_id} is disabled")
            if command.registration_id is not None:
                started = open_registration(identity, command.registration_id).started
                if (started.user_id, started.role) != (command.user_id, command.role):
                    raise Rejected("registration_mismatch", "not the registration's membership")
            else:
                require_rank(identity, command.by, command.role)
            require_active_tenant(tenant)
            return [MembershipAdded(user_id=command.user_id, role=command.role,
                                    registration_id=command.registration_id)]  # fmt: skip
        case RemoveMembership():
            if current is None:
                return []
            if not compensating(identity, command.registration_id, current.registration_id):
                require_rank(identity, command.by, current.role)
                _keep_an_owner(identity, command.user_id)
            return [MembershipRemoved(user_id=command.user_id)]
        case ChangeRole():
            if current is None:
                raise Rejected("unknown_membership", f"user {command.user_id} is not a member")
            if current.role == command.role:
                return []
            require_active_tenant(tenant)
            higher = max(current.role, command.role, key=RANK.__getitem__)
            require_rank(identity, command.by, higher)
            if current.role == "owner":
                _keep_an_owner(identity, command.user_id)
            return [MembershipRoleChanged(user_id=command.user_id, role=command.role,
                                          previous_role=current.role)]  # fmt: skip
        case _:
            assert_never(command)


def _keep_an_owner(identity: Identity, user_id: UUID) -> None:
    if identity.owners() == {user_id}:
        raise Rejected("last_owner", "the tenant's last owner cannot leave or be demoted")
