"""Tenant secrets at rest: AES-GCM bound to the tenant id; API keys stored only hashed."""

from __future__ import annotations

import uuid

import pytest

from projections.credentials import (
    SecretError,
    api_key_sha256,
    decrypt_secret,
    encrypt_secret,
    new_api_key,
)

pytestmark = pytest.mark.unit

KEY = bytes(range(32))


def test_secrets_round_trip_and_are_bound_to_their_tenant() -> None:
    tenant = uuid.uuid4()
    blob = encrypt_secret(KEY, "auth-token-ção", tenant)
    assert blob.startswith("v1.")
    assert "auth-token" not in blob
    assert encrypt_secret(KEY, "auth-token-ção", tenant) != blob  # fresh nonce each time
    assert decrypt_secret(KEY, blob, tenant) == "auth-token-ção"
    with pytest.raises(SecretError):
        decrypt_secret(KEY, blob, uuid.uuid4())
    with pytest.raises(SecretError):
        decrypt_secret(bytes(32), blob, tenant)
    with pytest.raises(SecretError):
        decrypt_secret(KEY, blob[:-4] + "AAAA", tenant)
    with pytest.raises(SecretError):
        decrypt_secret(KEY, "v2." + blob[3:], tenant)


def test_api_keys_are_random_and_stored_hashed() -> None:
    key, digest = new_api_key()
    assert key.startswith("zf_")
    assert len(key) > 40
    assert digest == api_key_sha256(key)
    assert len(digest) == 64
    assert new_api_key()[0] != key
