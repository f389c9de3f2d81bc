"""The key that encrypts tenant secrets at rest: ZAPFLOW_SECRET_KEY or the state dir's file."""

from __future__ import annotations

import base64
import binascii
import os
import secrets

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
