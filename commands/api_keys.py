"""A tenant's API keys for integrations: created with scopes, revoked for good.

The API generates the key, shows it once and sends only its SHA-256. A key id, once revoked,
never comes back (`key_revoked`): a client retrying a creation after the revocation must not
resurrect the key it lost.
"""

from __future__ import annotations

from typing import Final, Literal, Self, assert_never
from uuid import UUID

from pydantic import Field, model_validator

from commands.errors import Rejected
from commands.identity import (
    SCOPES_OF,
    Identity,
    require_active_tenant,
    require_rank,
    require_tenant,
)
from commands.tenant import TenantProfile
from events.identity import SCOPES, ApiKeyCreated, ApiKeyRevoked, IdentityEvent, Scope, TokenSha256
from events.registry import Message


class CreateApiKey(Message):
    type: Literal["CreateApiKey"] = "CreateApiKey"
    schema_version: Literal[1] = 1
    key_id: UUID
    name: str = Field(min_length=1, max_length=200)
    key_sha256: TokenSha256
    scopes: list[Scope] = Field(min_length=1, max_length=len(SCOPES))
    by: UUID | None = Field(default=None, description="The acting user; None: the platform.")

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if len(set(self.scopes)) != len(self.scopes):
            raise ValueError("scopes lists a scope twice")
        return self


class RevokeApiKey(Message):
    type: Literal["RevokeApiKey"] = "RevokeApiKey"
    schema_version: Literal[1] = 1
    key_id: UUID
    by: UUID | None = None


type ApiKeyCommand = CreateApiKey | RevokeApiKey
API_KEY_COMMANDS: Final = (CreateApiKey, RevokeApiKey)


def decide(
    identity: Identity, tenant: TenantProfile | None, command: ApiKeyCommand
) -> list[IdentityEvent]:
    require_tenant(tenant)
    found = identity.keys.get(command.key_id)
    match command:
        case CreateApiKey():
            if found is not None:
                if found.revoked:
                    raise Rejected("key_revoked", f"key {command.key_id} was revoked")
                if found.key_sha256 == command.key_sha256:
                    return []
                raise Rejected("key_exists", f"key {command.key_id} exists with another secret")
            require_active_tenant(tenant)
            if command.by is not None:
                member = identity.memberships.get(command.by)
                user = identity.users.get(command.by)
                allowed = SCOPES_OF[member.role] if member and user and user.active else set()
                if not set(command.scopes) <= allowed:
                    raise Rejected("role_not_allowed", "a key cannot carry more than its creator")
            return [ApiKeyCreated(**command.model_dump(exclude={"type", "schema_version", "by"}))]
        case RevokeApiKey():
            if found is None:
                raise Rejected("unknown_key", f"no key {command.key_id} in this tenant")
            if found.revoked:
                return []
            require_rank(identity, command.by, "viewer")
            return [ApiKeyRevoked(key_id=command.key_id)]
        case _:
            assert_never(command)
