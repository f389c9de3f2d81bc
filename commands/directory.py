"""The platform's e-mail directory: who holds each address, decided by one writer (ADR 0018).

Its commands are keyed by `PLATFORM_TENANT_ID`, so every reservation of every tenant lands in one
partition and is decided in order: the first claim wins, a release frees the address, and a
registration that let go can never claim again (a late or repeated reservation of a failed
registration must not take an address nobody will release).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Final, Literal, assert_never
from uuid import UUID

from commands.errors import Rejected
from events.identity import Email
from events.registration import (
    PLATFORM_TENANT_ID,
    DirectoryEvent,
    EmailReservationReleased,
    EmailReserved,
)
from events.registry import Message


class ReserveEmail(Message):
    type: Literal["ReserveEmail"] = "ReserveEmail"
    schema_version: Literal[1] = 1
    email: Email
    registration_id: UUID
    tenant_id: UUID
    user_id: UUID


class ReleaseEmail(Message):
    """The registration gives up its claim, whether or not it got the address."""

    type: Literal["ReleaseEmail"] = "ReleaseEmail"
    schema_version: Literal[1] = 1
    email: Email
    registration_id: UUID


type DirectoryCommand = ReserveEmail | ReleaseEmail
DIRECTORY_COMMANDS: Final = (ReserveEmail, ReleaseEmail)


@dataclass(frozen=True, slots=True)
class Directory:
    holders: Mapping[str, UUID] = field(default_factory=dict)
    """E-mail → the registration holding it."""
    released: frozenset[UUID] = frozenset()
    """Registrations that let go of their claim, for good."""


def decide(current: Directory, owner: UUID, command: DirectoryCommand) -> list[DirectoryEvent]:
    if owner != PLATFORM_TENANT_ID:
        # Decided anywhere else, two partitions could each grant the same address.
        raise Rejected("not_platform_directory", "e-mail claims are decided by the platform")
    rid, holder = command.registration_id, current.holders.get(command.email)
    match command:
        case ReserveEmail():
            if rid in current.released:
                raise Rejected("registration_closed", f"registration {rid} released its claim")
            if holder == rid:
                return []
            if holder is not None:
                raise Rejected("email_taken", "the e-mail address belongs to another user")
            return [EmailReserved(**command.payload())]
        case ReleaseEmail():
            if rid in current.released:
                return []
            return [EmailReservationReleased(email=command.email, registration_id=rid,
                                             was_held=holder == rid)]  # fmt: skip
        case _:
            assert_never(command)


def evolve(current: Directory, event: DirectoryEvent) -> Directory:
    match event:
        case EmailReserved():
            return replace(current, holders={**current.holders, event.email: event.registration_id})
        case EmailReservationReleased():
            holders = current.holders
            if holders.get(event.email) == event.registration_id:
                holders = {k: v for k, v in holders.items() if k != event.email}
            released = current.released | {event.registration_id}
            return replace(current, holders=holders, released=released)
        case _:
            assert_never(event)
