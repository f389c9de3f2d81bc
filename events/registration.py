"""Events of the registration saga: its own stream ("registration:<id>") and the e-mail directory.

A registration's state lives in the log: it is started and ends completed or failed on its
tenant's partition; the e-mail it claims is reserved and released on the platform directory
stream, which one decider owns for every tenant (ADR 0018).
"""

from __future__ import annotations

from typing import Final, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from pydantic import AwareDatetime, Field

from events.identity import Email, PasswordHash, Role, TokenSha256
from events.registry import Message

PLATFORM_TENANT_ID: Final = uuid5(NAMESPACE_URL, "zapflow:platform")
"""The tenant id the platform's own streams are keyed by: one partition, one writer."""
DIRECTORY_STREAM: Final = "directory:emails"

type Step = Literal["reserve_email", "create_user", "add_membership", "issue_invitation"]
STEPS: Final[tuple[Step, ...]] = ("reserve_email", "create_user", "add_membership",
                                  "issue_invitation")  # fmt: skip


class UserRegistrationStarted(Message):
    """Someone is to become a member of the tenant; the user and invitation ids are fixed here."""

    type: Literal["UserRegistrationStarted"] = "UserRegistrationStarted"
    schema_version: Literal[1] = 1
    registration_id: UUID
    tenant_id: UUID
    email: Email
    role: Role
    user_id: UUID
    password_hash: PasswordHash | None = None
    invitation_id: UUID
    invitation_token_sha256: TokenSha256
    invitation_expires_at: AwareDatetime
    invited_by: UUID | None = Field(default=None, description="None: the platform admin.")


class UserRegistrationCompensating(Message):
    """A step failed: from here on the registration only undoes what it did."""

    type: Literal["UserRegistrationCompensating"] = "UserRegistrationCompensating"
    schema_version: Literal[1] = 1
    registration_id: UUID
    failed_step: Step
    reason: str = Field(min_length=1)


class UserRegistrationCompleted(Message):
    type: Literal["UserRegistrationCompleted"] = "UserRegistrationCompleted"
    schema_version: Literal[1] = 1
    registration_id: UUID
    user_id: UUID


class UserRegistrationFailed(Message):
    """Everything the registration did is undone; `reason` says why it failed, at `failed_step`."""

    type: Literal["UserRegistrationFailed"] = "UserRegistrationFailed"
    schema_version: Literal[1] = 1
    registration_id: UUID
    failed_step: Step
    reason: str = Field(min_length=1)


class EmailReserved(Message):
    """The first claim on an e-mail address, platform-wide; held until its registration lets go."""

    type: Literal["EmailReserved"] = "EmailReserved"
    schema_version: Literal[1] = 1
    email: Email
    registration_id: UUID
    tenant_id: UUID
    user_id: UUID


class EmailReservationReleased(Message):
    """A registration gave up its claim: the address is free again if it held it."""

    type: Literal["EmailReservationReleased"] = "EmailReservationReleased"
    schema_version: Literal[1] = 1
    email: Email
    registration_id: UUID
    was_held: bool = Field(description="False: the registration never got the address.")


type RegistrationEvent = (
    UserRegistrationStarted
    | UserRegistrationCompensating
    | UserRegistrationCompleted
    | UserRegistrationFailed
)
REGISTRATION_EVENTS: Final = (
    UserRegistrationStarted,
    UserRegistrationCompensating,
    UserRegistrationCompleted,
    UserRegistrationFailed,
)
type DirectoryEvent = EmailReserved | EmailReservationReleased
DIRECTORY_EVENTS: Final = (EmailReserved, EmailReservationReleased)
