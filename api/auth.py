"""Bearer API keys → tenant: only the key's SHA-256 is stored, and lookups are cached briefly.

A missing, malformed or unknown key is a 401 with `WWW-Authenticate: Bearer`; the answer never
says which of the three it was. The cache is keyed by the key's hash, never the key itself.
"""

from __future__ import annotations

import hashlib
import time
from typing import Annotated, Final
from uuid import UUID

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.container import Container
from api.errors import ApiError
from api.expiring import Expiring
from projections.tenants import tenant_by_api_key_hash

TTL_S: Final = 30.0
MAX_ENTRIES: Final = 10_000


class ApiKeys:
    """Resolves API keys through the tenant directory; one per event loop."""

    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = TTL_S) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._entries: Expiring[str, UUID | None] = Expiring(MAX_ENTRIES)  # by hash, never key

    async def tenant_for(self, api_key: str) -> UUID | None:
        digest = hashlib.sha256(api_key.encode()).hexdigest()
        now = time.monotonic()
        hit = self._entries.fresh(digest, now)
        if hit is not None:
            return hit[1]
        async with self._pool.acquire() as conn:
            record = await tenant_by_api_key_hash(conn, digest)
        tenant = None if record is None else record.tenant_id
        self._entries.put(digest, tenant, now + self._ttl_s)
        return tenant


# Declares the scheme in the OpenAPI document; the checks and the 401 itself are ours.
_BEARER: Final = HTTPBearer(
    auto_error=False, scheme_name="ApiKey", description="The tenant's API key (`zf_…`)."
)


async def authenticated_tenant(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
) -> UUID:
    """The tenant of the request's `Authorization: Bearer <api key>` (else 401)."""
    key = credentials.credentials.strip() if credentials is not None else ""
    if credentials is None or credentials.scheme.lower() != "bearer" or not key or len(key) > 512:
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer)")
    container: Container = request.app.state.container
    tenant = await container.api_keys.tenant_for(key)
    if tenant is None:
        raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer)")
    return tenant


TenantDep = Annotated[UUID, Depends(authenticated_tenant)]
