"""`X-Twilio-Signature`: the URL Twilio signed, and a constant-time check with the tenant's token.

The signature is computed by twilio's own `RequestValidator.compute_signature` over every form
parameter (repeated ones included), for the URL as configured and, failing that, with and
without its port, as `RequestValidator.validate` accepts; only the comparison is ours,
`hmac.compare_digest`, because the SDK's `compare` returns early on a length mismatch.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit, urlunsplit

# twilio ships no type information (no py.typed); these three names are all we use of it.
from twilio.request_validator import (
    RequestValidator,
    add_port,
    remove_port,
)

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
    base = urlsplit(public_url)
    scheme, host = base.scheme, base.hostname or ""
    if base.port is not None:
        host = f"{host}:{base.port}"
    if trust_proxy:
        scheme = _first(headers.get("x-forwarded-proto")) or scheme
        host = _first(headers.get("x-forwarded-host")) or host
    return urlunsplit((scheme, host, base.path.rstrip("/") + path, query, ""))


def signature_is_valid(auth_token: str, url: str, params: FormParams, signature: str) -> bool:
    """Whether `signature` is Twilio's HMAC-SHA1 of `url` and `params` under `auth_token`.

    The URL exactly as configured is tried first (what Twilio signs for messaging); the forms
    with and without the port only when that fails. Stopping at the first match reveals which
    URL form matched, nothing about the token: each comparison itself is constant-time.
    """
    validator = RequestValidator(auth_token)
    given = signature.encode()
    if hmac.compare_digest(validator.compute_signature(url, params).encode(), given):
        return True
    parsed = urlsplit(url)
    alternatives = {remove_port(parsed), add_port(parsed)} - {url}
    return any(
        hmac.compare_digest(validator.compute_signature(candidate, params).encode(), given)
        for candidate in sorted(alternatives)
    )
