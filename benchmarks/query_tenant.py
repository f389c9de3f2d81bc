"""A tenant with 100,000 conversations (and as many of other tenants in the same table) for the
query-API scenario, and the two targets: ours and a bare endpoint running the same SELECT."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from benchmarks.http_bench import Target
from projections.database import connect

PAGE: Final = 50
OTHER_TENANTS: Final = 9

# Spread over a year of updates, a few states, one contact each: what an index scan has to skip.
_SEED: Final = """
INSERT INTO conversations (tenant_id, conversation_id, contact, sender, state, owner,
                           window_open_until, last_message_at, last_message_preview, unread_count,
                           started_at, updated_at)
SELECT $1, gen_random_uuid(), 'whatsapp:+55' || (11900000000 + n), 'whatsapp:+14155238886',
       (ARRAY['bot', 'bot', 'bot', 'human', 'closed'])[1 + n % 5], NULL,
       now() - (n % 1000) * interval '1 minute', now() - n * interval '5 minutes',
       'Olá, gostaria de marcar uma consulta para ' || n, n % 4,
       now() - n * interval '5 minutes' - interval '1 day', now() - n * interval '5 minutes'
FROM generate_series(1, $2) AS n
"""


@dataclass(frozen=True, slots=True)
class QueryTenant:
    tenant_id: uuid.UUID
    ours: Target
    bare: Target
    conversations: int
    in_table: int


async def query_tenant(database_url: str, conversations: int) -> QueryTenant:
    """Seed the active version's `conversations` (as the owner, which RLS-forced tables allow
    only with the tenant set) and register the tenant's API key."""
    api_key = "zk_" + secrets.token_urlsafe(24)
    tenant_id = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(OTHER_TENANTS)]
    conn = await connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO tenants (tenant_id, name, twilio_account_sid, "
            "twilio_auth_token_encrypted, api_key_sha256, registered_at, updated_seq) "
            "VALUES ($1, 'bench query', $2, 'c2VhbGVk', $3, now(), 1)",
            tenant_id, "AC" + uuid.uuid4().hex, hashlib.sha256(api_key.encode()).hexdigest(),
        )  # fmt: skip
        for tenant, count in [(tenant_id, conversations)] + [
            (other, conversations // OTHER_TENANTS) for other in others
        ]:
            async with conn.transaction():
                await conn.execute("SELECT set_config('app.tenant_id', $1, true)", str(tenant))
                await conn.execute(_SEED, tenant, count)
        await conn.execute("ANALYZE conversations")
        in_table = await conn.fetchval("SELECT count(*) FROM conversations")
    finally:
        await conn.close()
    path = f"/v1/conversations?limit={PAGE}"
    ours = Target("conversations", "zapflow", path,
                  headers=(f"Authorization: Bearer {api_key}",))  # fmt: skip
    bare = Target("conversations_bare", "bare", f"/conversations/{tenant_id}?limit={PAGE}")
    return QueryTenant(tenant_id, ours, bare, conversations, in_table)
