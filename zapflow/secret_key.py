"""The key that encrypts tenant secrets at rest: ZAPFLOW_SECRET_KEY or the state dir's file."""

from __future__ import annotations

import base64
import binascii
import os
import secrets

from api.tokens import TokenKeys, derived_admin_token
from zapflow.errors import ConfigurationError
from zapflow.settings import Settings

KEY_BYTES = 32


def _decode(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ConfigurationError(
            "ZAPFLOW_SECRET_KEY", "***", f"must be urlsafe base64 of {KEY_BYTES} bytes"
        )
    return key


def resolve_secret_key(settings: Settings, *, create: bool = False) -> bytes:
    """The configured key; else the state dir's `secret.key` (created once when `create`)."""
    if settings.secret_key is not None:
        return _decode(settings.secret_key.get_secret_value())
    path = settings.secret_key_file
    if path.exists():
        return _decode(path.read_text())
    if not create:
        raise ConfigurationError(
            "ZAPFLOW_SECRET_KEY",
            "(unset)",
            f"no key set and no {path}; set it, or run `zapflow up` once in this folder",
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(base64.urlsafe_b64encode(key).decode() + "\n")
    return key


def resolve_token_keys(settings: Settings, secret_key: bytes) -> TokenKeys:
    """How access tokens are signed: ZAPFLOW_JWT_KEY, else HS256 derived from the secret key."""
    options = {
        "audience": settings.jwt_audience,
        "issuer": settings.jwt_issuer,
        "access_ttl_s": settings.access_token_ttl_s,
        "refresh_ttl_s": settings.refresh_token_ttl_s,
    }
    if settings.jwt_key is None:
        if settings.jwt_algorithm != "HS256":
            raise ConfigurationError(
                "ZAPFLOW_JWT_KEY", "(unset)", "EdDSA needs an Ed25519 private key (PEM)"
            )
        return TokenKeys.from_secret_key(secret_key, **options)
    key = settings.jwt_key.get_secret_value().encode()
    try:
        if settings.jwt_algorithm == "HS256":
            return TokenKeys.hs256(key, **options)
        return TokenKeys.eddsa(key, **options)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError("ZAPFLOW_JWT_KEY", "***", str(exc)) from None


def resolve_admin_token(settings: Settings, secret_key: bytes) -> str:
    """The platform admin's token: ZAPFLOW_ADMIN_TOKEN, else derived from the secret key."""
    if settings.admin_token is None:
        return derived_admin_token(secret_key)
    token = settings.admin_token.get_secret_value()
    if len(token) < 32:
        raise ConfigurationError("ZAPFLOW_ADMIN_TOKEN", "***", "must be at least 32 characters")
    return token
