"""`X-Twilio-Signature`: the URL Twilio signed, and a constant-time check with the tenant's token.

The signature is Twilio's algorithm (`RequestValidator.compute_signature`): HMAC-SHA1 under the
auth token of the URL followed by every parameter name and value, names sorted, each name's
distinct values sorted. It is computed here with the one-shot `hmac.digest` because this runs
for every webhook and the SDK's version costs three times as much; a property test holds the two
equal. The URL as configured is tried and, failing that, with and without its port, as
`RequestValidator.validate` accepts; the comparison is `hmac.compare_digest`, because the SDK's
`compare` returns early on a length mismatch.
"""

from __future__ import annotations

import base64
import functools
import hmac
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

# twilio ships no type information (no py.typed); these two names are all we use of it.
from twilio.request_validator import add_port, remove_port

from api.twilio_form import FormParams

SIGNATURE_HEADER: Final = "X-Twilio-Signature"


def _first(header: str | None) -> str | None:
    """The first (client-most) value of a comma-separated forwarding header."""
    if header is None:
        return None
    value = header.split(",", 1)[0].strip()
    return value or None


def signed_url(
    public_url: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    *,
    trust_proxy: bool,
) -> str:
    """The URL Twilio called: the public base (its path is a prefix) + path + query.

    With `trust_proxy`, the scheme and host come from `X-Forwarded-Proto`/`X-Forwarded-Host`
    (when sent) instead of the public URL. Credentials and the fragment never count.
    """
    scheme, host, prefix = _base(public_url)
    if trust_proxy:
        scheme = _first(headers.get("x-forwarded-proto")) or scheme
        host = _first(headers.get("x-forwarded-host")) or host
    return urlunsplit((scheme, host, prefix + path, query, ""))


@functools.lru_cache(maxsize=8)
def _base(public_url: str) -> tuple[str, str, str]:
    """Scheme, host[:port] and path prefix of the public URL (parsed once, not per request)."""
    base = urlsplit(public_url)
    host = base.hostname or ""
    if base.port is not None:
        host = f"{host}:{base.port}"
    return base.scheme, host, base.path.rstrip("/")


def compute_signature(auth_token: bytes, url: str, params: FormParams) -> bytes:
    """Twilio's X-Twilio-Signature (base64) for `url` and `params` under `auth_token`."""
    parts = [url]
    for name in sorted(params):
        values = params[name]
        if len(values) == 1:
            parts += (name, values[0])
        else:
            for value in sorted(set(values)):
                parts += (name, value)
    return base64.b64encode(hmac.digest(auth_token, "".join(parts).encode(), "sha1"))


def signature_is_valid(auth_token: str, url: str, params: FormParams, signature: str) -> bool:
    """Whether `signature` is Twilio's HMAC-SHA1 of `url` and `params` under `auth_token`.

    The URL exactly as configured is tried first (what Twilio signs for messaging); the forms
    with and without the port only when that fails. Stopping at the first match reveals which
    URL form matched, nothing about the token: each comparison itself is constant-time.
    """
    token, given = auth_token.encode(), signature.encode()
    if hmac.compare_digest(compute_signature(token, url, params), given):
        return True
    parsed = urlsplit(url)
    alternatives = {remove_port(parsed), add_port(parsed)} - {url}
    return any(
        hmac.compare_digest(compute_signature(token, candidate, params), given)
        for candidate in sorted(alternatives)
    )
