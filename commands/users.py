"""A tenant's users and their credentials: creation, disable/enable, invitations, passwords.

Users come to be only through a registration (`commands.registration`), which holds the
platform-wide claim on their e-mail. Every decision is idempotent: asking for what is already so
records nothing, so a command decided again after a crash never changes anything twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal, assert_never
from uuid import UUID

from pydantic import AwareDatetime, Field

from commands.errors import Rejected
from commands.identity import (
    Identity,
    User,
    compensating,
    require_active_tenant,
    require_rank,
    require_tenant,
)
from commands.registration import open_registration
from commands.tenant import TenantProfile
from events.identity import (
    Email,
    IdentityEvent,
    InvitationIssued,
    InvitationRevoked,
    PasswordChanged,
    PasswordHash,
    PasswordResetRequested,
    Role,
    TokenSha256,
    UserCreated,
    UserDisabled,
    UserEnabled,
)
from events.registry import Message


class CreateUser(Message):
    type: Literal["CreateUser"] = "CreateUser"
    schema_version: Literal[1] = 1
    user_id: UUID
    email: Email
    password_hash: PasswordHash | None = None
    registration_id: UUID


class DisableUser(Message):
    type: Literal["DisableUser"] = "DisableUser"
    schema_version: Literal[1] = 1
    user_id: UUID
    reason: str = Field(default="", max_length=500)
    by: UUID | None = Field(default=None, description="The acting user; None: the platform.")
    registration_id: UUID | None = Field(
        default=None, description="Set by a registration undoing its own user."
    )


class EnableUser(Message):
    type: Literal["EnableUser"] = "EnableUser"
    schema_version: Literal[1] = 1
    user_id: UUID
    by: UUID | None = None


class IssueInvitation(Message):
    type: Literal["IssueInvitation"] = "IssueInvitation"
    schema_version: Literal[1] = 1
    invitation_id: UUID
    user_id: UUID
    token_sha256: TokenSha256
    expires_at: AwareDatetime
    by: UUID | None = None
    registration_id: UUID | None = None


class RevokeInvitation(Message):
    type: Literal["RevokeInvitation"] = "RevokeInvitation"
    schema_version: Literal[1] = 1
    invitation_id: UUID
    user_id: UUID
    by: UUID | None = None
    registration_id: UUID | None = None


class RequestPasswordReset(Message):
    type: Literal["RequestPasswordReset"] = "RequestPasswordReset"
    schema_version: Literal[1] = 1
    user_id: UUID
    token_sha256: TokenSha256
    expires_at: AwareDatetime


class ChangePassword(Message):
    """Set a new password: the API checked the old one, or `reset_token_sha256` (a password
    reset) or `invitation_token_sha256` (accepting an invitation: once, before any password)
    authorises it."""

    type: Literal["ChangePassword"] = "ChangePassword"
    schema_version: Literal[1] = 1
    user_id: UUID
    password_hash: PasswordHash
    reset_token_sha256: TokenSha256 | None = None
    invitation_token_sha256: TokenSha256 | None = None


type UserCommand = (
    CreateUser | DisableUser | EnableUser | IssueInvitation | RevokeInvitation
    | RequestPasswordReset | ChangePassword
)  # fmt: skip
USER_COMMANDS: Final = (CreateUser, DisableUser, EnableUser, IssueInvitation, RevokeInvitation,
                        RequestPasswordReset, ChangePassword)  # fmt: skip


def decide(
    identity: Identity, tenant: TenantProfile | None, command: UserCommand, now: datetime
) -> list[IdentityEvent]:
    require_tenant(tenant)
    match command:
        case CreateUser():
            existing = identity.users.get(command.user_id)
            if existing is not None:
                if existing.registration_id == command.registration_id:
                    return []
                raise Rejected("user_exists", f"user {command.user_id} already exists")
            started = open_registration(identity, command.registration_id).started
            if (started.user_id, started.email) != (command.user_id, command.email):
                raise Rejected("registration_mismatch", "not the registration's user")
            require_active_tenant(tenant)
            return [UserCreated(**command.payload())]
        case DisableUser():
            user = identity.user(command.user_id)
            if not user.active:
                return []
            if not compensating(identity, command.registration_id, user.registration_id):
                require_rank(identity, command.by, _role(identity, command.user_id))
                if identity.owners() == {command.user_id}:
                    raise Rejected("last_owner", "the tenant's last owner cannot be disabled")
            return [UserDisabled(user_id=command.user_id, reason=command.reason)]
        case EnableUser():
            user = identity.user(command.user_id)
            if user.active:
                return []
            if not identity.settled(user.registration_id):
                # Its registration released the e-mail: enabling it would make a second user.
                raise Rejected("registration_failed", "the user's registration did not complete")
            require_active_tenant(tenant)
            require_rank(identity, command.by, _role(identity, command.user_id))
            return [UserEnabled(user_id=command.user_id)]
        case IssueInvitation():
            return _invite(identity, tenant, command)
        case RevokeInvitation():
            found = identity.invitations.get(command.invitation_id)
            if found is None or found.user_id != command.user_id:
                raise Rejected("unknown_invitation", f"no invitation {command.invitation_id}")
            if found.revoked:
                return []
            origin = identity.users[found.user_id].registration_id
            if not compensating(identity, command.registration_id, origin):
                require_rank(identity, command.by, _role(identity, found.user_id))
            return [InvitationRevoked(invitation_id=command.invitation_id, user_id=found.user_id)]
        case RequestPasswordReset():
            user = _active(identity, command.user_id)
            if user.reset is not None and user.reset[0] == command.token_sha256:
                return []
            return [PasswordResetRequested(**command.payload())]
        case ChangePassword():
            user = _active(identity, command.user_id)
            if user.password_hash == command.password_hash:
                return []
            if command.invitation_token_sha256 is not None:
                _accept(identity, user, command.user_id, command.invitation_token_sha256, now)
                if command.reset_token_sha256 is not None:
                    raise Rejected("invalid_request", "an invitation or a reset, not both")
            if command.reset_token_sha256 is not None:
                if user.reset is None or user.reset[0] != command.reset_token_sha256:
                    raise Rejected("invalid_reset_token", "no such password reset")
                if now >= user.reset[1]:
                    raise Rejected("reset_token_expired", "the password reset has expired")
            through_reset = command.reset_token_sha256 is not None
            return [PasswordChanged(user_id=command.user_id, password_hash=command.password_hash,
                                    through_reset=through_reset)]  # fmt: skip
        case _:
            assert_never(command)


def _invite(
    identity: Identity, tenant: TenantProfile | None, command: IssueInvitation
) -> list[IdentityEvent]:
    found = identity.invitations.get(command.invitation_id)
    if found is not None:
        if found.revoked:
            raise Rejected("invitation_revoked", "a revoked invitation is never issued again")
        if (found.user_id, found.token_sha256) == (command.user_id, command.token_sha256):
            return []
        raise Rejected("invitation_exists", f"invitation {command.invitation_id} exists")
    _active(identity, command.user_id)
    if command.registration_id is not None:
        started = open_registration(identity, command.registration_id).started
        if (started.invitation_id, started.user_id) != (command.invitation_id, command.user_id):
            raise Rejected("registration_mismatch", "not the registration's invitation")
    else:
        require_rank(identity, command.by, _role(identity, command.user_id))
    require_active_tenant(tenant)
    return [InvitationIssued(**command.model_dump(exclude={"type", "schema_version", "by"}))]


def _accept(identity: Identity, user: User, user_id: UUID, token: str, now: datetime) -> None:
    """An invitation sets the first password only, with its token, before it expires."""
    found = next(
        (
            i
            for i in identity.invitations.values()
            if (i.user_id, i.token_sha256) == (user_id, token)
        ),
        None,
    )
    if found is None or found.revoked:
        raise Rejected("invalid_invitation", "no such invitation")
    if found.expires_at is not None and now >= found.expires_at:
        raise Rejected("invitation_expired", "the invitation has expired")
    if user.password_hash is not None:
        raise Rejected("invitation_used", "the invitation was accepted already")


def _active(identity: Identity, user_id: UUID) -> User:
    user = identity.user(user_id)
    if not user.active:
        raise Rejected("user_disabled", f"user {user_id} is disabled")
    return user


def _role(identity: Identity, user_id: UUID) -> Role:
    membership = identity.memberships.get(user_id)
    return membership.role if membership is not None else "viewer"
