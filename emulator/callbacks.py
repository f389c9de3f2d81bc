"""Status callbacks on the wire: the signed form POST, and Twilio's connection-override retries.

A callback URL may carry `user:pass@` (sent as Basic auth) and a `#ct=…&rt=…&rc=…&rp=…`
fragment (Twilio's "Webhooks Connection Overrides"); neither is part of the URL that is called
and signed. By default a callback is retried once, and only when the TCP connection fails.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import httpx

SIGNATURE_HEADER: Final = "X-Twilio-Signature"
IDEMPOTENCY_HEADER: Final = "I-Twilio-Idempotency-Token"
USER_AGENT: Final = "TwilioProxy/1.1"


def signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """HMAC-SHA1 under the auth token of the URL then each name+value, names in byte order."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    return base64.b64encode(hmac.digest(auth_token.encode(), payload.encode(), "sha1")).decode()


@dataclass(frozen=True, slots=True)
class Target:
    """Where and how a callback goes: the URL called and signed, auth, retry policy, timeouts."""

    url: str
    auth: tuple[str, str] | None
    retries: int
    retry_on: frozenset[str]
    connect_s: float
    read_s: float


def _bounded(overrides: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    try:
        return min(max(int(overrides[key]), low), high)
    except (KeyError, ValueError):
        return default


def target(url: str) -> Target:
    parts = urlsplit(url)
    overrides = dict(parse_qsl(parts.fragment))
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    netloc = parts.netloc.rpartition("@")[2]
    return Target(
        url=urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")),
        auth=auth,
        retries=_bounded(overrides, "rc", 1, 0, 5),
        retry_on=frozenset(overrides.get("rp", "ct").split(",")),
        connect_s=_bounded(overrides, "ct", 5000, 100, 10000) / 1000,
        read_s=_bounded(overrides, "rt", 15000, 100, 15000) / 1000,
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One POST of one callback, as the emulator's callback log shows it."""

    url: str
    params: dict[str, str]
    attempt: int
    status_code: int | None
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "params": self.params,
            "attempt": self.attempt,
            "status_code": self.status_code,
            "error": self.error,
        }


def _failure_kind(status_code: int | None, error: Exception | None) -> str | None:
    """Which `rp` policy word covers this outcome (None: a success, or nothing retries it)."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
        return "ct"
    if isinstance(error, httpx.ReadTimeout):
        return "rt"
    if status_code is not None and 400 <= status_code < 600:
        return f"{status_code // 100}xx"
    return None


async def deliver(
    http: httpx.AsyncClient,
    to: Target,
    params: dict[str, str],
    auth_token: str,
    idempotency_token: str,
) -> list[Attempt]:
    """POST `params` signed to `to`, retrying as its overrides say; every attempt reported."""
    headers = {
        SIGNATURE_HEADER: signature(auth_token, to.url, params),
        IDEMPOTENCY_HEADER: idempotency_token,
        "User-Agent": USER_AGENT,
    }
    timeout = httpx.Timeout(to.read_s, connect=to.connect_s)
    auth = httpx.BasicAuth(*to.auth) if to.auth is not None else httpx.USE_CLIENT_DEFAULT
    attempts: list[Attempt] = []
    for number in range(1, to.retries + 2):
        status_code: int | None = None
        error: httpx.HTTPError | None = None
        try:
            response = await http.post(
                to.url, data=params, headers=headers, auth=auth, timeout=timeout
            )
            status_code = response.status_code
        except httpx.HTTPError as failure:
            error = failure
        attempts.append(
            Attempt(to.url, params, number, status_code, None if error is None else repr(error))
        )
        kind = _failure_kind(status_code, error)
        if kind is None or not ({kind, "all"} & to.retry_on):
            break
    return attempts
