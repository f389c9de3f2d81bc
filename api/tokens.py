"""Access and refresh tokens: JWTs signed with one configured algorithm, checked strictly.

`verify` accepts exactly the configured algorithm (HS256 with a secret of at least 32 bytes, or
EdDSA with an Ed25519 key pair), so a token whose header says `none`, or HS256 "signed" with the
public key of an EdDSA deployment (key confusion), is refused before any signature is computed.
Audience, issuer, expiry, issue time, subject, tenant and the token's use (`typ`: access or
refresh) are all required; an access token is never accepted as a refresh token or the reverse.
Without configured keys the HS256 secret is derived from the platform's secret key (HKDF), so a
local `zapflow up` needs no extra setting and every process of it agrees.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

type Algorithm = Literal["HS256", "EdDSA"]
type TokenUse = Literal["access", "refresh"]

MIN_HS256_BYTES: Final = 32
_REQUIRED: Final = ["exp", "iat", "nbf", "aud", "iss", "sub", "tid", "typ", "jti"]


class InvalidToken(Exception):
    """Not a token this platform issued for this use, or no longer valid (the reason is for
    logs; clients get one uniform 401)."""


def derive(secret_key: bytes, purpose: str) -> bytes:
    """32 bytes for `purpose`, derived from the platform's secret key (HKDF-SHA256)."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=f"zapflow {purpose}".encode()).derive(
        secret_key
    )


def derived_admin_token(secret_key: bytes) -> str:
    """The platform-admin token of a deployment that sets none (local `zapflow up`)."""
    return "zfadmin_" + base64.urlsafe_b64encode(derive(secret_key, "admin token")).decode().rstrip(
        "="
    )


@dataclass(frozen=True, slots=True)
class TokenKeys:
    """How tokens are signed and checked; build with `hs256`, `eddsa` or `from_secret_key`."""

    algorithm: Algorithm
    signing_key: bytes | Ed25519PrivateKey = field(repr=False)
    verifying_key: bytes | Ed25519PublicKey = field(repr=False)
    audience: str = "zapflow-api"
    issuer: str = "zapflow"
    access_ttl_s: int = 900
    refresh_ttl_s: int = 14 * 24 * 3600

    @classmethod
    def hs256(cls, secret: bytes, **options: Any) -> TokenKeys:
        if len(secret) < MIN_HS256_BYTES:
            raise ValueError(f"an HS256 secret has at least {MIN_HS256_BYTES} bytes")
        return cls("HS256", secret, secret, **options)

    @classmethod
    def eddsa(cls, private_pem: bytes, **options: Any) -> TokenKeys:
        key = serialization.load_pem_private_key(private_pem, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError("an EdDSA signing key is an Ed25519 private key (PEM, PKCS#8)")
        return cls("EdDSA", key, key.public_key(), **options)

    @classmethod
    def from_secret_key(cls, secret_key: bytes, **options: Any) -> TokenKeys:
        return cls.hs256(derive(secret_key, "jwt hs256"), **options)


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    use: TokenUse
    expires_at: datetime
    password_version: str = ""
    """`pwv`: the user's password version when the session began (a changed password ends it)."""


def issue(
    keys: TokenKeys,
    use: TokenUse,
    user_id: uuid.UUID,
    tenant_id: uuid.UUID,
    now: datetime,
    password_version: str = "",
) -> tuple[str, datetime]:
    """A signed token for `use`, and when it expires."""
    ttl = keys.access_ttl_s if use == "access" else keys.refresh_ttl_s
    expires = now + timedelta(seconds=ttl)
    claims = {
        "iss": keys.issuer,
        "aud": keys.audience,
        "sub": str(user_id),
        "tid": str(tenant_id),
        "typ": use,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int(expires.timestamp()),
        "jti": str(uuid.uuid4()),
        "pwv": password_version,
    }
    return jwt.encode(claims, keys.signing_key, algorithm=keys.algorithm), expires


def verify(keys: TokenKeys, token: str, use: TokenUse) -> Claims:
    """The claims of a valid token issued for `use`; raises `InvalidToken` otherwise."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != keys.algorithm:  # `none`, or another algorithm: never tried
            raise InvalidToken(f"algorithm {header.get('alg')!r} is not accepted")
        claims = jwt.decode(
            token,
            keys.verifying_key,
            algorithms=[keys.algorithm],
            audience=keys.audience,
            issuer=keys.issuer,
            options={"require": _REQUIRED},
        )
        if claims["typ"] != use:
            raise InvalidToken(f"a {claims['typ']!r} token used as {use!r}")
        return Claims(
            uuid.UUID(claims["sub"]),
            uuid.UUID(claims["tid"]),
            use,
            datetime.fromtimestamp(claims["exp"], tz=UTC),
            str(claims.get("pwv", "")),
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(type(exc).__name__) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidToken(f"malformed claims ({type(exc).__name__})") from None
