"""What the API needs at run time, built once in the lifespan and handed to routes by dependency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import asyncpg
from fastapi import Depends, Request

from api.broker import BrokerLink
from api.spool import CommandSpool
from api.tenant_cache import DEFAULT_TTL_S, TenantCache
from api.tokens import TokenKeys, derived_admin_token
from projections.database import APP_ROLE, with_user

if TYPE_CHECKING:
    from api.auth import Authenticator

type Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    """The settings the API reads, resolved by the composition root."""

    database_url: str
    bootstrap_servers: str
    public_url: str
    trust_proxy: bool = False
    probe_timeout_s: float = 2.0
    secret_key: bytes = field(kw_only=True, repr=False)
    max_body_bytes: int = 65536
    produce_timeout_s: float = 2.0
    app_database_url: str | None = None
    """The query API's connection (role `zapflow_app`); by default DATABASE_URL's server and
    database as that role, without a password."""
    tenant_ttl_s: float = DEFAULT_TTL_S
    """How long a webhook trusts its cached directory row: a suspension or a rotated-out token
    takes effect at the webhook within this (ADR 0018)."""

    token_keys: TokenKeys | None = field(default=None, kw_only=True, repr=False)
    """How access tokens are signed; None: HS256 with a key derived from `secret_key`."""
    admin_token: str | None = field(default=None, kw_only=True, repr=False)
    """The platform admin's bearer token; None: derived from `secret_key`."""
    auth_cache_ttl_s: float = 5.0
    """How long a key's or a member's lookup is trusted (revocations apply within it)."""

    @property
    def tokens(self) -> TokenKeys:
        return self.token_keys or TokenKeys.from_secret_key(self.secret_key)

    @property
    def platform_admin_token(self) -> str:
        return self.admin_token or derived_admin_token(self.secret_key)

    @property
    def reader_url(self) -> str:
        return self.app_database_url or with_user(self.database_url, APP_ROLE)


@dataclass(frozen=True, slots=True)
class Container:
    config: ApiConfig
    pool: asyncpg.Pool
    broker: BrokerLink
    spool: CommandSpool
    tenants: TenantCache
    reader: asyncpg.Pool
    """Connected as `zapflow_app`: queries go through `projections.read.tenant_scope`."""
    authenticator: Authenticator
    clock: Clock = utc_now


async def get_container(request: Request) -> Container:
    """Async on purpose: FastAPI runs a plain `def` dependency in a worker thread per request."""
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]
