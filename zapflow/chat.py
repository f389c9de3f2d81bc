"""`zapflow chat`: talk to a tenant's agent as a WhatsApp contact would, against the local platform.

Each line typed becomes an inbound-message webhook signed with the tenant's own Twilio auth
token (decrypted here with the platform's secret key, never printed), posted to the running
API exactly as Twilio would post it. The replies are read back from the read models: each new
message of the bot or of an operator in the conversation is printed as decided, and a hand-off
or a closing is said. When `zapflow up` runs the Twilio emulator (runtime.json names it), the
emulator also hears each line first, so its 24-hour window opens as WhatsApp's would, and each
reply is then printed again, indented, as the emulator received it (`  twilio: …`), or said
not to have arrived; with a real Twilio, replies are shown as decided only.
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
SEND_WAIT_S: Final = 5.0
"""After a reply is decided, how long to wait for the Twilio emulator to receive it."""
_STOPPED: Final = ("handoff_requested", "human", "closed")
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
    emulator_url: str = ""
    """The Twilio emulator of the running `zapflow up` ("": none; replies shown as decided)."""


class EmulatorWatch:
    """The Twilio emulator's side of a chat: what the contact wrote, what was sent to them.

    `wrote` tells the emulator the contact wrote to the sender (`POST /_emulator/inbound`), as
    WhatsApp would tell Twilio, so the 24-hour window opens; `sent` returns the messages the
    account sent to the contact that it has not returned before (`GET /_emulator/messages`),
    oldest first, as the text a phone would show.
    """

    def __init__(self, http: httpx.AsyncClient, url: str, account_sid: str, contact: str) -> None:
        self._http, self._url = http, url.rstrip("/")
        self._account_sid, self._contact = account_sid, contact
        self._seen: set[str] = set()

    async def start(self) -> None:
        """Forget what the emulator already holds: only what is sent from now on is news."""
        self._seen.update(sid for sid, _ in await self._messages())

    async def wrote(self, sender: str, body: str) -> None:
        inbound = {"recipient": self._contact, "sender": sender, "body": body}
        response = await self._call("POST", "/_emulator/inbound", inbound)
        if response.status_code != 204:
            self._refused(response)

    async def sent(self) -> list[str]:
        fresh = [(sid, text) for sid, text in await self._messages() if sid not in self._seen]
        self._seen.update(sid for sid, _ in fresh)
        return [text for _, text in fresh]

    async def _messages(self) -> list[tuple[str, str]]:
        response = await self._call("GET", "/_emulator/messages")
        if response.status_code != 200:
            self._refused(response)
        return [
            (entry["sid"], _text(entry["params"]))
            for entry in response.json()["messages"]
            if entry["account_sid"] == self._account_sid
            and entry["params"].get("To") == [self._contact]
        ]

    async def _call(
        self, method: str, path: str, body: dict[str, str] | None = None
    ) -> httpx.Response:
        try:
            return await self._http.request(method, self._url + path, json=body)
        except httpx.HTTPError as exc:
            problem = f"the Twilio emulator of `zapflow up` does not answer ({exc!r})"
            raise ConfigurationError("emulator_url", self._url, problem) from None

    def _refused(self, response: httpx.Response) -> None:
        problem = f"the Twilio emulator refused ({response.status_code}): {response.text[:200]}"
        raise ConfigurationError("emulator_url", self._url, problem)


def _text(params: dict[str, list[str]]) -> str:
    """A received create request as the contact would see it."""
    body = "\n".join(params.get("Body", []))
    if "ContentSid" in params:
        variables = " ".join(params.get("ContentVariables", []))
        body = f"[template {params['ContentSid'][0]} {variables}]".replace(" ]", "]")
    media = len(params.get("MediaUrl", []))
    return body + (f" [+{media} media]" if media else "")


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
            watch = None
            if target.emulator_url:
                watch = EmulatorWatch(http, target.emulator_url, tenant.twilio_account_sid, contact)
                await watch.start()
            for line in lines:
                body = line.strip()
                if not body:
                    continue
                if watch is not None:
                    await watch.wrote(sender, body)
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
                seen = await _replies(conn, tenant_id, cid, seen, say, reply_wait_s, watch)
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
    say: Callable[[str], None], wait_s: float, watch: EmulatorWatch | None = None,
) -> int:  # fmt: skip
    """Print the replies that arrive within `wait_s` (then quiet for `QUIET_S`), and last
    whether they left the conversation with a person or closed.

    With `watch`, what the emulator received is printed under the replies, the k-th message
    once k replies are printed; the wait goes on (up to `SEND_WAIT_S` after the last reply)
    until it has received at least as many messages as replies were decided.
    """
    deadline = time.monotonic() + wait_s
    quiet_until = replied = 0.0  # 0: nothing replied yet
    decided = received = 0
    pending: list[str] = []
    state = "bot"
    while True:
        for row in await _newer(conn, tenant_id, cid, seen):
            seen, decided, replied = row["tenant_seq"], decided + 1, time.monotonic()
            say(f"{row['author']}: {row['body']}")
            state = row["state"]
            quiet_until = time.monotonic() + QUIET_S
        if watch is not None:
            fresh = await watch.sent()
            pending += fresh
            if fresh and replied:
                quiet_until = time.monotonic() + QUIET_S
            while pending and received < decided:
                say(f"  twilio: {pending.pop(0)}")
                received += 1
        now = time.monotonic()
        if not replied and now >= deadline:
            break
        sent_all = watch is None or received >= decided or now >= replied + SEND_WAIT_S
        if replied and now >= quiet_until and sent_all:
            break
        await asyncio.sleep(0.2)
    for text in pending:
        say(f"  twilio: {text}")
    received += len(pending)
    if not replied:
        say(f"(no reply within {wait_s:.0f} s)")
    elif watch is not None and received < decided:
        missing = "" if received == 0 else f"{decided - received} of them "
        say(f"  ({missing}not received by the Twilio emulator within {SEND_WAIT_S:.0f} s)")
    if state in _STOPPED:
        say(f"(the conversation is now {state.replace('_', ' ')})")
    return seen
