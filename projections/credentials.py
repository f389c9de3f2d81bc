"""Tenant secrets at rest: AES-256-GCM bound to the tenant id, and API keys stored only hashed.

An encrypted secret is the text `v1.<urlsafe base64 of nonce + ciphertext + tag>`. The tenant id
is the associated data, so a blob copied into another tenant's row fails to decrypt instead of
handing that tenant someone else's Twilio credentials.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from typing import Final
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
API_KEY_PREFIX: Final = "zf_"
_VERSION: Final = "v1."


class SecretError(Exception):
    """A stored secret cannot be decrypted: wrong key, wrong tenant, or damaged text."""


def _cipher(key: bytes) -> AESGCM:
    if len(key) != KEY_BYTES:
        raise SecretError(f"the secret key must be {KEY_BYTES} bytes (AES-256)")
    return AESGCM(key)


def encrypt_secret(key: bytes, plaintext: str, tenant_id: UUID) -> str:
    """`plaintext` sealed for `tenant_id` with a fresh random nonce."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = _cipher(key).encrypt(nonce, plaintext.encode(), tenant_id.bytes)
    return _VERSION + base64.urlsafe_b64encode(nonce + sealed).decode()


def decrypt_secret(key: bytes, blob: str, tenant_id: UUID) -> str:
    """The plaintext of `blob`; raises `SecretError` when it was not sealed for this tenant."""
    if not blob.startswith(_VERSION):
        raise SecretError("unknown secret format (expected v1.)")
    try:
        raw = base64.urlsafe_b64decode(blob.removeprefix(_VERSION).encode())
    except (binascii.Error, ValueError):
        raise SecretError("secret is not valid base64") from None
    if len(raw) <= NONCE_BYTES:
        raise SecretError("secret is truncated")
    try:
        plain = _cipher(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], tenant_id.bytes)
    except InvalidTag:
        raise SecretError("secret does not decrypt with this key for this tenant") from None
    return plain.decode()


def api_key_sha256(api_key: str) -> str:
    """The hex SHA-256 the read model stores instead of the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> tuple[str, str]:
    """A fresh API key (shown once) and its SHA-256 hex (stored)."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return key, api_key_sha256(key)
