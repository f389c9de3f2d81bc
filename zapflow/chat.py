"""`zapflow chat`: talk to a tenant's agent as a WhatsApp contact would, against the local platform.

Each line typed becomes an inbound-message webhook signed with the tenant's own Twilio auth
token (decrypted here with the platform's secret key, never printed), posted to the running
API exactly as Twilio would post it. The replies are read back from the read models: each new
message of the bot or of an operator in the conversation is printed, and a hand-off or a
closing is said. Until the sender exists (issue #4), replies are shown as decided, before they
would reach Twilio.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final
from uuid import UUID

import asyncpg
import httpx
from twilio.request_validator import RequestValidator

from commands import conversation as conv
from projections.credentials import decrypt_secret
from projections.read import ENTER_WITH_PUBLIC
from projections.tenants import get_tenant
from zapflow.errors import ConfigurationError
from zapflow.runtime import Endpoints
from zapflow.tenants import directory_connection

REPLY_WAIT_S: Final = 30.0
QUIET_S: Final = 2.0
"""After a reply, how long to wait for more (a reply can come in parts)."""
_NEWER: Final = """
SELECT m.tenant_seq, m.author, m.body, c.state FROM messages m
JOIN conversations c ON c.tenant_id = m.tenant_id AND c.conversation_id = m.conversation_id
WHERE m.tenant_id = $1 AND m.conversation_id = $2 AND m.direction = 'outbound'
  AND m.tenant_seq > $3
ORDER BY m.tenant_seq
"""


@dataclass(frozen=True, slots=True)
class ChatTarget:
    """Where to post and how to sign: the API's URL and the URL it checks signatures against."""

    api_url: str
    public_url: str


async def chat(
    endpoints: Endpoints, target: ChatTarget, secret_key: bytes, tenant_id: UUID, contact: str,
    lines: Iterable[str], say: Callable[[str], None], reply_wait_s: float = REPLY_WAIT_S,
) -> int:  # fmt: skip
    """Send each line as `contact`; print what comes back. Returns the number of lines sent."""
    conn = await directory_connection(endpoints.database_url, 10.0)
    try:
        tenant = await get_tenant(conn, tenant_id)
        if tenant is None:
            raise ConfigurationError("--tenant", str(tenant_id), "no such tenant")
        token = decrypt_secret(secret_key, tenant.twilio_auth_token_encrypted, tenant_id)
        sender = sorted(tenant.senders)[0]
        cid = UUID(conv.conversation_id(tenant_id, contact))
        seen = await _latest(conn, tenant_id, cid)
        path = f"/v1/tenants/{tenant_id}/twilio/messages"
        sent = 0
        async with httpx.AsyncClient(timeout=10.0) as http:
            for line in lines:
                body = line.strip()
                if not body:
                    continue
                form = _form(tenant.twilio_account_sid, contact, sender, body)
                signature = RequestValidator(token).compute_signature(
                    target.public_url + path, form
                )
                response = await http.post(target.api_url + path, data=form,
                                           headers={"X-Twilio-Signature": signature})  # fmt: skip
                if response.status_code != 200:
                    raise ConfigurationError(
                        "ZAPFLOW_PUBLIC_URL", target.public_url,
                        f"the API refused the message ({response.status_code}): "
                        f"{response.text[:200]}",
                    )  # fmt: skip
                sent += 1
                seen = await _replies(conn, tenant_id, cid, seen, say, reply_wait_s)
    finally:
        await conn.close()
    return sent


def _form(account_sid: str, contact: str, sender: str, body: str) -> dict[str, str]:
    sid = "SM" + secrets.token_hex(16)
    digits = "".join(c for c in contact if c.isdigit())
    return {
        "MessageSid": sid, "SmsMessageSid": sid, "SmsSid": sid, "AccountSid": account_sid,
        "From": contact, "To": sender, "Body": body, "NumMedia": "0", "NumSegments": "1",
        "ProfileName": "zapflow chat", "WaId": digits, "SmsStatus": "received",
        "MessageType": "text", "ApiVersion": "2010-04-01",
    }  # fmt: skip


async def _latest(conn: asyncpg.Connection, tenant_id: UUID, cid: UUID) -> int:
    rows = await _newer(conn, tenant_id, cid, 0)
    return max((row["tenant_seq"] for row in rows), default=0)


async def _newer(
    conn: asyncpg.Connection, tenant_id: UUID, cid: UUID, after: int
) -> list[asyncpg.Record]:
    async with conn.transaction(readonly=True):
        await conn.execute(ENTER_WITH_PUBLIC, str(tenant_id))
        return list(await conn.fetch(_NEWER, tenant_id, cid, after))


async def _replies(
    conn: asyncpg.Connection, tenant_id: UUID, cid: UUID, seen: int,
    say: Callable[[str], None], wait_s: float,
) -> int:  # fmt: skip
    """Print the replies that arrive within `wait_s` (then quiet for `QUIET_S`)."""
    deadline, quiet_until = time.monotonic() + wait_s, None
    while time.monotonic() < (quiet_until or deadline):
        for row in await _newer(conn, tenant_id, cid, seen):
            seen = row["tenant_seq"]
            say(f"{row['author']}: {row['body']}")
            if row["state"] in ("handoff_requested", "human", "closed"):
                say(f"(the conversation is now {row['state'].replace('_', ' ')})")
            quiet_until = time.monotonic() + QUIET_S
        await asyncio.sleep(0.2)
    if quiet_until is None:
        say(f"(no reply within {wait_s:.0f} s)")
    return seen
