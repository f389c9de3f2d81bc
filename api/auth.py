"""Who is calling, and may they: every route declares the permission it needs (ADR 0019).

Three kinds of tenant credential arrive as `Authorization: Bearer …`:
- a user's **access token** (a JWT from `POST /v1/auth/login`): the user's *current* role in the
  token's tenant decides, read from the memberships read model (cached `cache_ttl_s`), so a
  disabled user, a removed member or a demotion takes effect within that time, not at expiry;
- a **scoped API key** `zf_<tenant id, 32 hex>_<secret>`: its scopes decide; the tenant id in
  the key lets the lookup run inside that tenant's row-level-security scope (ADR 0011), and a
  revoked key stops working within `cache_ttl_s`;
- the tenant's **registration key** (`zf_<secret>`, from `zapflow tenants
  create` / `POST /v1/admin/tenants`): every permission, like an owner.

Permissions: `read` (queries), `operate` (conversation commands), `admin` (people, keys, audit).
Roles grant: viewer → read; operator → read, operate; admin and owner → all three. A key's scopes
are the permissions it has. Missing, malformed, unknown, expired or tampered credentials are one
401 (`WWW-Authenticate: Bearer`) that never says which; a valid credential without the
permission is a 403. The platform admin (`/v1/admin/...`) uses its own token from settings and
nothing else; no tenant credential is ever a platform admin.

Caches are keyed by the credential's SHA-256 (or by tenant and user), never the credential.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Final, Literal, cast
from uuid import UUID

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.expiring import Expiring
from api.tokens import InvalidToken, TokenKeys, verify
from events.identity import Role
from projections import read
from projections.api_keys import active_key, touch_key
from projections.people import standing
from projections.tenants import tenant_by_api_key_hash

log = logging.getLogger("zapflow.api.auth")

type Permission = Literal["read", "operate", "admin"]
type Kind = Literal["user", "api_key", "tenant_key"]

PERMISSIONS: Final[tuple[Permission, ...]] = ("read", "operate", "admin")
ROLE_PERMISSIONS: Final[dict[Role, frozenset[Permission]]] = {
    "owner": frozenset(PERMISSIONS),
    "admin": frozenset(PERMISSIONS),
    "operator": frozenset({"read", "operate"}),
    "viewer": frozenset({"read"}),
}
SCOPED_KEY: Final = re.compile(r"^zf_([0-9a-f]{32})_[A-Za-z0-9_-]{20,200}$")
MAX_CREDENTIAL: Final = 4096
CACHE_TTL_S: Final = 5.0
LAST_USED_EVERY_S: Final = 60.0
MAX_ENTRIES: Final = 10_000
_UNAUTHORIZED: Final = "valid credentials are required (Authorization: Bearer)"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller of one tenant."""

    tenant_id: UUID
    kind: Kind
    subject: UUID
    """The user id, the key id, or the tenant id for its registration key."""
    permissions: frozenset[Permission]
    role: Role | None = None

    @property
    def acting_user(self) -> UUID | None:
        """The user who acts, for the commands' `by`; None when a key acts (as the platform
        would: the decider's rank rules apply to people, a key's reach is its scopes)."""
        return self.subject if self.kind == "user" else None


class Authenticator:
    """Resolves bearer credentials to principals; one per event loop (thread-unsafe)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        reader: asyncpg.Pool,
        keys: TokenKeys,
        admin_token: str,
        *,
        ttl_s: float = CACHE_TTL_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool  # the tenant directory (registration keys) is read outside RLS
        self._reader = reader
        self.keys = keys
        self._admin_sha256 = hashlib.sha256(admin_token.encode()).digest()
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._keys: Expiring[str, Principal | None] = Expiring(MAX_ENTRIES)
        self._members: Expiring[tuple[UUID, UUID], tuple[Role, str] | None] = Expiring(MAX_ENTRIES)
        self._last_used: Expiring[tuple[UUID, UUID], None] = Expiring(MAX_ENTRIES)

    def is_platform_admin(self, credential: str) -> bool:
        digest = hashlib.sha256(credential.encode()).digest()
        return hmac.compare_digest(digest, self._admin_sha256)

    async def principal(self, credential: str, now: datetime) -> Principal | None:
        """The caller behind `credential`, or None when it is not a valid tenant credential."""
        if credential.count(".") == 2:
            return await self._user(credential)
        digest = hashlib.sha256(credential.encode()).hexdigest()
        clock = self._monotonic()
        hit = self._keys.fresh(digest, clock)
        if hit is not None:
            found = hit[1]
        else:
            found = await self._key(credential, digest)
            self._keys.put(digest, found, clock + self._ttl_s)
        if found is not None and found.kind == "api_key":
            await self._touch(found, now, clock)
        return found

    async def standing(
        self, tenant_id: UUID, user_id: UUID, *, fresh: bool = False
    ) -> tuple[Role, str] | None:
        """(role, password version) if the user is an active member of the tenant (cached
        briefly unless `fresh`: a new session is never granted from the cache)."""
        clock = self._monotonic()
        hit = None if fresh else self._members.fresh((tenant_id, user_id), clock)
        if hit is not None:
            return hit[1]
        async with read.tenant_scope(self._reader, tenant_id) as conn:
            found = await standing(conn, tenant_id, user_id)
        self._members.put((tenant_id, user_id), found, clock + self._ttl_s)
        return found

    async def _user(self, token: str) -> Principal | None:
        try:
            claims = verify(self.keys, token, "access")
        except InvalidToken as exc:
            log.info("access token refused: %s", exc)
            return None
        found = await self.standing(claims.tenant_id, claims.user_id)
        if found is None or found[1] != claims.password_version:
            return None  # not a member now, or the password changed since the session began
        role = found[0]
        return Principal(claims.tenant_id, "user", claims.user_id, ROLE_PERMISSIONS[role], role)

    async def _key(self, credential: str, digest: str) -> Principal | None:
        scoped = SCOPED_KEY.match(credential)
        if scoped is not None:
            tenant_id = UUID(scoped.group(1))
            async with read.tenant_scope(self._reader, tenant_id) as conn:
                key = await active_key(conn, tenant_id, digest)
            if key is None:
                return None
            scopes = frozenset(s for s in key.scopes if s in PERMISSIONS)
            return Principal(tenant_id, "api_key", key.key_id, scopes)
        async with self._pool.acquire() as conn:
            record = await tenant_by_api_key_hash(conn, digest)
        if record is None:
            return None
        return Principal(record.tenant_id, "tenant_key", record.tenant_id, frozenset(PERMISSIONS))

    async def _touch(self, key: Principal, now: datetime, clock: float) -> None:
        """Record the key's last use, at most once a minute per key (never fails a request)."""
        ident = (key.tenant_id, key.subject)
        if self._last_used.fresh(ident, clock) is not None:
            return
        self._last_used.put(ident, None, clock + LAST_USED_EVERY_S)
        try:
            async with read.tenant_scope(self._reader, key.tenant_id, readonly=False) as conn:
                await touch_key(conn, key.tenant_id, key.subject, now)
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning(
                "last use of key %s of tenant %s not recorded: %r", key.subject, key.tenant_id, exc
            )


# Declares the scheme in the OpenAPI document; the checks and the 401 itself are ours.
_BEARER: Final = HTTPBearer(
    auto_error=False,
    scheme_name="Bearer",
    description="A user's access token (`POST /v1/auth/login`), a scoped API key (`zf_…`) or "
    "the tenant's registration key; `/v1/admin/…`: the platform admin token.",
)


def _credential(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "unauthorized", _UNAUTHORIZED)
    credential = credentials.credentials.strip()
    if not credential or len(credential) > MAX_CREDENTIAL:
        raise ApiError(401, "unauthorized", _UNAUTHORIZED)
    return credential


def _authenticator(request: Request) -> Authenticator:
    return cast(Authenticator, request.app.state.container.authenticator)


type Dependency[T] = Callable[..., Awaitable[T]]


def require(permission: Permission) -> Dependency[Principal]:
    """A dependency: the caller, if they hold `permission` in their tenant (else 401/403)."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
    ) -> Principal:
        credential = _credential(credentials)
        container = request.app.state.container
        principal = await _authenticator(request).principal(credential, container.clock())
        if principal is None:
            raise ApiError(401, "unauthorized", _UNAUTHORIZED)
        if permission not in principal.permissions:
            raise ApiError(403, "forbidden", f"this needs the {permission!r} permission")
        request.state.tenant_id = principal.tenant_id  # for the access log
        return principal

    dependency.zapflow_permission = permission  # type: ignore[attr-defined]  # route-table test
    return dependency


def _tenant_of(permission: Permission) -> Dependency[UUID]:
    needs = require(permission)

    # A default, not `Annotated`: with postponed annotations FastAPI resolves names in the
    # module's globals, where this closure's `needs` is not.
    async def tenant(principal: Principal = Depends(needs)) -> UUID:  # noqa: B008
        return principal.tenant_id

    return tenant


async def platform_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> None:
    """Only the platform admin token passes; anything else is a 401."""
    if not _authenticator(request).is_platform_admin(_credential(credentials)):
        raise ApiError(401, "unauthorized", "the platform admin token is required")


platform_admin.zapflow_permission = "platform"  # type: ignore[attr-defined]

Reader = Annotated[Principal, Depends(require("read"))]
Operator = Annotated[Principal, Depends(require("operate"))]
Administrator = Annotated[Principal, Depends(require("admin"))]
ReadTenant = Annotated[UUID, Depends(_tenant_of("read"))]
OperateTenant = Annotated[UUID, Depends(_tenant_of("operate"))]
AdminTenant = Annotated[UUID, Depends(_tenant_of("admin"))]
PlatformAdmin = Annotated[None, Depends(platform_admin)]
