"""Tenant credentials for the webhooks: the directory row plus its decrypted token, cached briefly.

Webhooks must not wait on the database for every request, and a tenant registered a moment ago
must appear quickly: found tenants are kept for `ttl_s`, unknown ids for `negative_ttl_s`. The
cache is keyed by tenant id and bounded, so a flood of made-up ids cannot grow it without limit.
A request refused on what the cache holds (a token rotated, a sender added, a tenant
reactivated since it was read) may `refresh` it, at most once per `refresh_s` per tenant, so a
change that lets requests in applies at once while a flood of forged requests costs one
directory read a second. A change that keeps requests out (a suspension, an old token) applies
when the entry lapses (ADR 0018).

The decrypted token lives only in memory and is excluded from `repr`; never log it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

import asyncpg

from api.expiring import Expiring
from projections.credentials import decrypt_secret
from projections.tenants import TenantRecord, get_tenant

log = logging.getLogger("zapflow.api.tenants")

DEFAULT_TTL_S: Final = 30.0
DEFAULT_NEGATIVE_TTL_S: Final = 2.0
DEFAULT_REFRESH_S: Final = 1.0
DEFAULT_MAX_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """What a webhook needs to know about its tenant."""

    record: TenantRecord
    auth_token: str = field(repr=False)

    @property
    def tenant_id(self) -> UUID:
        return self.record.tenant_id


class TenantCache:
    """Reads `projections.tenants` through the pool; thread-unsafe, one per event loop."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        secret_key: bytes,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        negative_ttl_s: float = DEFAULT_NEGATIVE_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        refresh_s: float = DEFAULT_REFRESH_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._key = secret_key
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._refresh_s = refresh_s
        self._monotonic = monotonic
        self._entries: Expiring[UUID, TenantCredentials | None] = Expiring(max_entries)
        self._read: Expiring[UUID, None] = Expiring(max_entries)
        """Tenants read from the directory less than `refresh_s` ago."""

    async def get(self, tenant_id: UUID) -> TenantCredentials | None:
        """The tenant's credentials, or None when the directory does not know it.

        Raises `projections.credentials.SecretError` when the stored token does not decrypt
        with this process's key (a configuration fault, never cached).
        """
        now = self._monotonic()
        hit = self._entries.fresh(tenant_id, now)
        if hit is not None:
            return hit[1]
        return await self._load(tenant_id, now)

    async def refresh(self, cached: TenantCredentials) -> TenantCredentials | None:
        """The tenant as the directory has it now, if that differs from `cached` (on which a
        request was just refused); None when it does not, or when the tenant was read less
        than `refresh_s` ago. Raises `SecretError` as `get` does."""
        tenant_id, now = cached.tenant_id, self._monotonic()
        if self._read.fresh(tenant_id, now) is not None:
            return None
        found = await self._load(tenant_id, now)
        return None if found is None or found.record == cached.record else found

    async def _load(self, tenant_id: UUID, now: float) -> TenantCredentials | None:
        self._read.put(tenant_id, None, now + self._refresh_s)  # before the wait: one reader
        async with self._pool.acquire() as conn:
            record = await get_tenant(conn, tenant_id)
        if record is None:
            self._entries.put(tenant_id, None, now + self._negative_ttl_s)
            return None
        token = decrypt_secret(self._key, record.twilio_auth_token_encrypted, tenant_id)
        credentials = TenantCredentials(record, token)
        self._entries.put(tenant_id, credentials, now + self._ttl_s)
        return credentials
