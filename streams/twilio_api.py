"""Twilio's Messages API through the official `twilio` SDK, as the sender needs it (ADR 0015).

The SDK's own async HTTP client has no timeout by default and retries nothing useful; ours is an
`AsyncHttpClient` on httpx with an explicit timeout and a pooled connection, pointed at the
real API or at any base URL (the emulator). Every outcome is classified for the sender:

* `Created` — 201: Twilio has the message (its SID).
* `NotSent` — Twilio certainly created nothing and a later try may work: 429/20429 ("never
  processed") or a connection that was refused before the request went out.
* `Refused` — a 4xx with Twilio's code (21211 bad number, 21610 opted out, …): final.
* `Unknown` — a timeout, a dropped connection, a 5xx: the message may or may not exist; the
  sender reconciles (`find_sent`) before it tries again, never blindly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import urlsplit

import httpx
from twilio.base.exceptions import TwilioRestException
from twilio.http import AsyncHttpClient
from twilio.http.response import Response
from twilio.rest import Client

log = logging.getLogger("zapflow.sender.twilio")

REAL_API: Final = "https://api.twilio.com"
CLOCK_SKEW: Final = timedelta(minutes=2)
"""How far Twilio's clock (`date_created`, to the second) may be from ours in a lookup."""
LOOKUP_LIMIT: Final = 200


@dataclass(frozen=True, slots=True)
class Created:
    sid: str
    status: str


@dataclass(frozen=True, slots=True)
class NotSent:
    code: str
    detail: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Unknown:
    detail: str


type Outcome = Created | NotSent | Refused | Unknown


class HttpxTwilioClient(AsyncHttpClient):  # type: ignore[misc]  # the SDK is untyped
    """The SDK's HTTP layer on httpx: a timeout on every call and, with `base_url`, every
    Twilio domain served from that URL (paths kept), e.g. the emulator's."""

    def __init__(self, base_url: str | None, timeout_s: float, max_connections: int) -> None:
        super().__init__(logger=log, is_async=True, timeout=timeout_s)
        self.base_url = base_url.rstrip("/") if base_url else None
        host = urlsplit(self.base_url or REAL_API).hostname or ""
        # Half of the call's time at most waiting for a pooled connection: a call that never
        # got one is known not sent (`NotSent`), not ambiguous, and the rest is left for it.
        self._timeout = _phases(timeout_s)
        self._http = httpx.AsyncClient(
            timeout=self._timeout,
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            trust_env=host not in ("127.0.0.1", "localhost", "::1"),  # no proxy for a local API
        )  # fmt: skip

    async def request(
        self,
        method: str,
        uri: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the SDK's signature
        allow_redirects: bool = False,
    ) -> Response:
        if self.base_url is not None:
            parts = urlsplit(uri)
            uri = self.base_url + parts.path + (f"?{parts.query}" if parts.query else "")
        response = await self._http.request(
            method, uri, params=params, data=data, headers=headers,  # type: ignore[arg-type]
            auth=httpx.BasicAuth(*auth) if auth else None,
            timeout=_phases(timeout) if timeout else self._timeout,
            follow_redirects=allow_redirects,
        )  # fmt: skip
        return Response(response.status_code, response.text, response.headers)

    async def close(self) -> None:
        await self._http.aclose()


def _phases(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, pool=timeout_s / 2)


@dataclass(slots=True)
class TwilioMessages:
    """One tenant's Messages API (its own account and token)."""

    client: Client

    @classmethod
    def for_account(cls, http: HttpxTwilioClient, account_sid: str, token: str) -> TwilioMessages:
        return cls(Client(account_sid, token, http_client=http))

    async def create(
        self,
        *,
        to: str,
        from_: str,
        status_callback: str,
        body: str | None = None,
        content_sid: str | None = None,
        content_variables: str | None = None,
        deadline: float | None = None,
    ) -> Outcome:
        """Create the message; the whole call (a wait for a pooled connection, connecting,
        writing, reading) ends by `deadline` (the running loop's clock): httpx's timeout is per
        phase, so without it a call could still go out well after its timeout."""
        kwargs: dict[str, object] = {"to": to, "from_": from_, "status_callback": status_callback}
        if content_sid is not None:
            kwargs["content_sid"] = content_sid
            if content_variables is not None:
                kwargs["content_variables"] = content_variables
        else:
            kwargs["body"] = body
        try:
            async with asyncio.timeout_at(deadline):
                message = await self.client.messages.create_async(**kwargs)
        except TimeoutError:  # cancelled at the deadline: it may have gone out
            return Unknown("no answer by the call's deadline")
        except TwilioRestException as exc:
            return _classified(exc)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left: no connection was made (or none was free in time).
            return NotSent("connect", f"could not connect: {type(exc).__name__}")
        except httpx.HTTPError as exc:  # a timeout or a dropped answer: it may exist
            return Unknown(f"{type(exc).__name__}: {exc}"[:300])
        except ValueError as exc:  # an answer that is not Twilio's JSON (a proxy's error page)
            return Unknown(f"unreadable answer: {exc}"[:300])
        return Created(str(message.sid), str(message.status))

    async def candidates(
        self, *, to: str, from_: str, since: datetime, body: str | None
    ) -> list[str]:
        """SIDs of messages to `to` from `from_` created since `since` (less the clock skew)
        with this body (any body for a template), oldest first. Raises httpx/Twilio errors: an
        unanswered lookup decides nothing."""
        floor = since.astimezone(UTC) - CLOCK_SKEW
        found: list[tuple[datetime, str]] = []
        # The list is sorted by DateSent, which a message still queued does not have yet: no
        # early stop on the first older one; the newest LOOKUP_LIMIT are all looked at.
        async for message in await self.client.messages.stream_async(
            to=to, from_=from_, limit=LOOKUP_LIMIT, page_size=100
        ):
            created = message.date_created
            if created is not None and created < floor:
                continue
            if body is None or message.body == body:
                found.append((created or floor, str(message.sid)))
        return [sid for _, sid in sorted(found)]


def _classified(exc: TwilioRestException) -> Outcome:
    code = str(exc.code or exc.status)
    detail = str(exc.msg)[:300]
    if exc.status == 429:
        return NotSent(code, detail)
    if exc.status >= 500:
        return Unknown(f"HTTP {exc.status} ({code}): {detail}")
    return Refused(code, detail)
