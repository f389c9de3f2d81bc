"""What the decider knows of a tenant's people: users, memberships, credentials, keys, sign-ups.

One `Identity` per tenant, folded by `evolve`; the rules shared by the user, membership, API key
and registration deciders (who may grant what, who the last owner is) live here with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final, Literal, assert_never
from uuid import UUID

from commands.errors import Rejected
from commands.tenant import TenantProfile
from events.identity import (
    ApiKeyCreated,
    ApiKeyRevoked,
    IdentityEvent,
    InvitationIssued,
    InvitationRevoked,
    MembershipAdded,
    MembershipRemoved,
    MembershipRoleChanged,
    PasswordChanged,
    PasswordResetRequested,
    Role,
    Scope,
    UserCreated,
    UserDisabled,
    UserEnabled,
)
from events.registration import (
    RegistrationEvent,
    Step,
    UserRegistrationCompensating,
    UserRegistrationCompleted,
    UserRegistrationFailed,
    UserRegistrationStarted,
)

RANK: Final[dict[Role, int]] = {"viewer": 0, "operator": 1, "admin": 2, "owner": 3}
# The widest key a member may create: nobody hands an integration more than they hold.
SCOPES_OF: Final[dict[Role, frozenset[Scope]]] = {
    "viewer": frozenset({"read"}),
    "operator": frozenset({"read", "operate"}),
    "admin": frozenset({"read", "operate", "admin"}),
    "owner": frozenset({"read", "operate", "admin"}),
}

type Phase = Literal["open", "compensating", "completed", "failed"]


@dataclass(frozen=True, slots=True)
class User:
    email: str
    registration_id: UUID
    active: bool = True
    password_hash: str | None = None
    reset: tuple[str, datetime] | None = None
    """The outstanding password reset: its token's SHA-256 and when it expires."""


@dataclass(frozen=True, slots=True)
class Membership:
    role: Role
    registration_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class Invitation:
    user_id: UUID
    token_sha256: str
    revoked: bool = False
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_sha256: str
    scopes: frozenset[Scope]
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class Registration:
    started: UserRegistrationStarted
    phase: Phase = "open"
    failed_step: Step | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Identity:
    users: Mapping[UUID, User] = field(default_factory=dict)
    memberships: Mapping[UUID, Membership] = field(default_factory=dict)
    invitations: Mapping[UUID, Invitation] = field(default_factory=dict)
    keys: Mapping[UUID, ApiKey] = field(default_factory=dict)
    registrations: Mapping[UUID, Registration] = field(default_factory=dict)

    def user(self, user_id: UUID) -> User:
        found = self.users.get(user_id)
        if found is None:
            raise Rejected("unknown_user", f"no user {user_id} in this tenant")
        return found

    def settled(self, registration_id: UUID | None) -> bool:
        """Not part of a registration still in progress (or compensated): counts as established."""
        found = self.registrations.get(registration_id) if registration_id else None
        return found is None or found.phase == "completed"

    def owners(self) -> set[UUID]:
        """Active owners whose membership is established (a pending one may yet be undone)."""
        return {
            uid for uid, m in self.memberships.items()
            if m.role == "owner" and self.settled(m.registration_id) and self.users[uid].active
        }  # fmt: skip


def require_active_tenant(tenant: TenantProfile | None) -> TenantProfile:
    """For commands that grant access: none while the tenant is suspended."""
    found = require_tenant(tenant)
    if found.suspended:
        raise Rejected("tenant_suspended", "the tenant is suspended")
    return found


def require_tenant(tenant: TenantProfile | None) -> TenantProfile:
    if tenant is None:
        raise Rejected("unknown_tenant", "the tenant is not registered")
    return tenant


def require_rank(identity: Identity, by: UUID | None, role: Role) -> None:
    """`by` (None: the platform admin) may act on a member holding, or to hold, `role`: admins
    and owners manage members, and nobody grants or touches a role above their own."""
    if by is None:
        return
    actor = identity.memberships.get(by)
    user = identity.users.get(by)
    if actor is None or user is None or not user.active or RANK[actor.role] < RANK["admin"]:
        raise Rejected("role_not_allowed", "only an active admin or owner manages members")
    if RANK[actor.role] < RANK[role]:
        raise Rejected("role_not_allowed", f"a {actor.role} cannot act on an {role}")


def compensating(identity: Identity, registration_id: UUID | None, origin: UUID | None) -> bool:
    """The command undoes what its own registration did, and that registration never completed:
    such an undo restores the state before the registration, so no membership rule stops it."""
    if registration_id is None or registration_id != origin:
        return False
    found = identity.registrations.get(registration_id)
    return found is not None and found.phase != "completed"


def evolve(current: Identity, event: IdentityEvent | RegistrationEvent) -> Identity:
    match event:
        case UserCreated():
            user = User(event.email, event.registration_id, password_hash=event.password_hash)
            return replace(current, users={**current.users, event.user_id: user})
        case UserDisabled() | UserEnabled():
            user = replace(current.users[event.user_id], active=isinstance(event, UserEnabled))
            return replace(current, users={**current.users, event.user_id: user})
        case PasswordResetRequested():
            user = replace(current.users[event.user_id],
                           reset=(event.token_sha256, event.expires_at))  # fmt: skip
            return replace(current, users={**current.users, event.user_id: user})
        case PasswordChanged():
            user = replace(current.users[event.user_id], password_hash=event.password_hash,
                           reset=None)  # fmt: skip
            return replace(current, users={**current.users, event.user_id: user})
        case MembershipAdded():
            membership = Membership(event.role, event.registration_id)
            return replace(current, memberships={**current.memberships, event.user_id: membership})
        case MembershipRoleChanged():
            changed = replace(current.memberships[event.user_id], role=event.role)
            return replace(current, memberships={**current.memberships, event.user_id: changed})
        case MembershipRemoved():
            left = {k: v for k, v in current.memberships.items() if k != event.user_id}
            return replace(current, memberships=left)
        case InvitationIssued():
            invitation = Invitation(event.user_id, event.token_sha256, expires_at=event.expires_at)
            invitations = {**current.invitations, event.invitation_id: invitation}
            return replace(current, invitations=invitations)
        case InvitationRevoked():
            revoked = replace(current.invitations[event.invitation_id], revoked=True)
            invitations = {**current.invitations, event.invitation_id: revoked}
            return replace(current, invitations=invitations)
        case ApiKeyCreated():
            key = ApiKey(event.key_sha256, frozenset(event.scopes))
            return replace(current, keys={**current.keys, event.key_id: key})
        case ApiKeyRevoked():
            key = replace(current.keys[event.key_id], revoked=True)
            return replace(current, keys={**current.keys, event.key_id: key})
        case UserRegistrationStarted():
            started = Registration(event)
            return replace(current, registrations={**current.registrations,
                                                   event.registration_id: started})  # fmt: skip
        case (
            UserRegistrationCompensating() | UserRegistrationCompleted() | UserRegistrationFailed()
        ):
            moved = _moved(current, event)
            return replace(current, registrations={**current.registrations,
                                                   event.registration_id: moved})  # fmt: skip
        case _:
            assert_never(event)


def _moved(
    current: Identity,
    event: UserRegistrationCompensating | UserRegistrationCompleted | UserRegistrationFailed,
) -> Registration:
    found = current.registrations[event.registration_id]
    match event:
        case UserRegistrationCompensating():
            return replace(found, phase="compensating", failed_step=event.failed_step,
                           reason=event.reason)  # fmt: skip
        case UserRegistrationCompleted():
            return replace(found, phase="completed")
        case UserRegistrationFailed():
            return replace(found, phase="failed")
        case _:
            assert_never(event)
