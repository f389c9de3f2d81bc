"""Events of a tenant's people and integrations: users ("user:<id>"), memberships and API keys.

Secrets never enter the log: a password only as its argon2id hash (hashed outside the domain),
invitation and reset tokens and API keys only as their SHA-256.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal
from uuid import UUID

from pydantic import AwareDatetime, Field, StringConstraints

from events.registry import Message

type Role = Literal["owner", "admin", "operator", "viewer"]
type Scope = Literal["read", "operate", "admin"]
ROLES: Final[tuple[Role, ...]] = ("owner", "admin", "operator", "viewer")
SCOPES: Final[tuple[Scope, ...]] = ("read", "operate", "admin")

# Case-insensitive uniqueness needs one spelling: stored lower-case, surrounding blanks dropped.
type Email = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"
    ),
]
# The hash's shape, checked so a plaintext password can never pass for one.
type PasswordHash = Annotated[
    str,
    StringConstraints(
        pattern=r"^\$argon2id\$v=19\$m=[0-9]+,t=[0-9]+,p=[0-9]+\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$"
    ),
]
type TokenSha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class UserCreated(Message):
    """A user exists, created by one registration (the only way users come to be)."""

    type: Literal["UserCreated"] = "UserCreated"
    schema_version: Literal[1] = 1
    user_id: UUID
    email: Email
    password_hash: PasswordHash | None = Field(
        default=None, description="None: the user sets a password through the invitation."
    )
    registration_id: UUID


class UserDisabled(Message):
    type: Literal["UserDisabled"] = "UserDisabled"
    schema_version: Literal[1] = 1
    user_id: UUID
    reason: str = Field(default="", max_length=500)


class UserEnabled(Message):
    type: Literal["UserEnabled"] = "UserEnabled"
    schema_version: Literal[1] = 1
    user_id: UUID


class MembershipAdded(Message):
    type: Literal["MembershipAdded"] = "MembershipAdded"
    schema_version: Literal[1] = 1
    user_id: UUID
    role: Role
    registration_id: UUID | None = Field(
        default=None, description="The registration that added it, if one did."
    )


class MembershipRemoved(Message):
    type: Literal["MembershipRemoved"] = "MembershipRemoved"
    schema_version: Literal[1] = 1
    user_id: UUID


class MembershipRoleChanged(Message):
    type: Literal["MembershipRoleChanged"] = "MembershipRoleChanged"
    schema_version: Literal[1] = 1
    user_id: UUID
    role: Role
    previous_role: Role


class InvitationIssued(Message):
    type: Literal["InvitationIssued"] = "InvitationIssued"
    schema_version: Literal[1] = 1
    invitation_id: UUID
    user_id: UUID
    token_sha256: TokenSha256
    expires_at: AwareDatetime
    registration_id: UUID | None = None


class InvitationRevoked(Message):
    type: Literal["InvitationRevoked"] = "InvitationRevoked"
    schema_version: Literal[1] = 1
    invitation_id: UUID
    user_id: UUID


class PasswordResetRequested(Message):
    type: Literal["PasswordResetRequested"] = "PasswordResetRequested"
    schema_version: Literal[1] = 1
    user_id: UUID
    token_sha256: TokenSha256
    expires_at: AwareDatetime


class PasswordChanged(Message):
    type: Literal["PasswordChanged"] = "PasswordChanged"
    schema_version: Literal[1] = 1
    user_id: UUID
    password_hash: PasswordHash
    through_reset: bool = Field(description="True when a reset token authorised the change.")


class ApiKeyCreated(Message):
    """An integration's key; the key itself is shown once by the API and never stored."""

    type: Literal["ApiKeyCreated"] = "ApiKeyCreated"
    schema_version: Literal[1] = 1
    key_id: UUID
    name: str = Field(min_length=1, max_length=200)
    key_sha256: TokenSha256
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES))


class ApiKeyRevoked(Message):
    type: Literal["ApiKeyRevoked"] = "ApiKeyRevoked"
    schema_version: Literal[1] = 1
    key_id: UUID


type IdentityEvent = (
    UserCreated
    | UserDisabled
    | UserEnabled
    | MembershipAdded
    | MembershipRemoved
    | MembershipRoleChanged
    | InvitationIssued
    | InvitationRevoked
    | PasswordResetRequested
    | PasswordChanged
    | ApiKeyCreated
    | ApiKeyRevoked
)
IDENTITY_EVENTS: Final = (
    UserCreated,
    UserDisabled,
    UserEnabled,
    MembershipAdded,
    MembershipRemoved,
    MembershipRoleChanged,
    InvitationIssued,
    InvitationRevoked,
    PasswordResetRequested,
    PasswordChanged,
    ApiKeyCreated,
    ApiKeyRevoked,
)
"""`IdentityEvent` as a tuple, for `isinstance` and for the event registry."""
