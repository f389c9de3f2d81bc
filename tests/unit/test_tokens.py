"""Access and refresh tokens: only the configured algorithm, audience, issuer and use pass."""

from __future__ import annotations

import base64
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.tokens import InvalidToken, TokenKeys, derived_admin_token, issue, verify

pytestmark = pytest.mark.unit
SECRET: Final = bytes(range(32))
USER: Final = uuid.UUID(int=1)
TENANT: Final = uuid.UUID(int=2)


def _now() -> datetime:
    return datetime.now(UTC)  # per call: the tokens expire, and a test run is long


def _pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


def _part(data: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@pytest.mark.parametrize("keys", [TokenKeys.from_secret_key(SECRET), TokenKeys.eddsa(_pem())])
def test_a_token_is_valid_for_its_own_use_only(keys: TokenKeys) -> None:
    access, expires = issue(keys, "access", USER, TENANT, _now())
    claims = verify(keys, access, "access")
    assert (claims.user_id, claims.tenant_id, claims.use) == (USER, TENANT, "access")
    assert abs((claims.expires_at - expires).total_seconds()) < 1
    with pytest.raises(InvalidToken):
        verify(keys, access, "refresh")
    refresh, _ = issue(keys, "refresh", USER, TENANT, _now())
    assert verify(keys, refresh, "refresh").use == "refresh"
    with pytest.raises(InvalidToken):
        verify(keys, refresh, "access")


def test_expired_wrong_audience_wrong_issuer_and_foreign_keys_are_refused() -> None:
    keys = TokenKeys.from_secret_key(SECRET)
    expired, _ = issue(
        keys, "access", USER, TENANT, _now() - timedelta(seconds=keys.access_ttl_s + 5)
    )
    elsewhere, _ = issue(TokenKeys.from_secret_key(SECRET, audience="x"), "access", USER, TENANT,
                         _now())  # fmt: skip
    stranger, _ = issue(
        TokenKeys.from_secret_key(SECRET, issuer="x"), "access", USER, TENANT, _now()
    )
    foreign, _ = issue(TokenKeys.from_secret_key(bytes(32)), "access", USER, TENANT, _now())
    for token in (expired, elsewhere, stranger, foreign, "", "a.b.c", "not a token"):
        with pytest.raises(InvalidToken):
            verify(keys, token, "access")


def test_a_changed_claim_breaks_the_signature() -> None:
    keys = TokenKeys.from_secret_key(SECRET)
    token, _ = issue(keys, "access", USER, TENANT, _now())
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for change in ({"tid": str(uuid.UUID(int=3))}, {"sub": str(uuid.UUID(int=4))},
                   {"exp": claims["exp"] + 3600}):  # fmt: skip
        with pytest.raises(InvalidToken):
            verify(keys, ".".join((header, _part({**claims, **change}), signature)), "access")


def test_alg_none_is_refused() -> None:
    keys = TokenKeys.from_secret_key(SECRET)
    token, _ = issue(keys, "access", USER, TENANT, _now())
    payload = token.split(".")[1]
    for alg in ("none", "None", "NONE"):
        with pytest.raises(InvalidToken):
            verify(keys, f"{_part({'alg': alg, 'typ': 'JWT'})}.{payload}.", "access")


def test_key_confusion_hs256_signed_with_the_public_key_is_refused() -> None:
    """An EdDSA deployment's public key is no secret: an HS256 token "signed" with it (the
    classic algorithm confusion) must not pass, whatever bytes of the key are used."""
    keys = TokenKeys.eddsa(_pem())
    public = keys.verifying_key
    assert not isinstance(public, bytes)
    good, _ = issue(keys, "access", USER, TENANT, _now())
    claims = jwt.decode(good, options={"verify_signature": False})
    for encoding, fmt in (
        (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        (serialization.Encoding.Raw, serialization.PublicFormat.Raw),
        (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    ):
        secret = public.public_bytes(encoding, fmt)
        forged = ".".join((
            _part({"alg": "HS256", "typ": "JWT"}), _part(claims),
            base64.urlsafe_b64encode(
                hmac.new(secret, f"{_part({'alg': 'HS256', 'typ': 'JWT'})}."
                                       f"{_part(claims)}".encode(), "sha256").digest()
            ).decode().rstrip("="),
        ))  # fmt: skip
        with pytest.raises(InvalidToken):
            verify(keys, forged, "access")


def test_keys_are_checked_when_configured() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        TokenKeys.hs256(b"short")
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip
    with pytest.raises(TypeError, match="Ed25519"):
        TokenKeys.eddsa(ec_pem)


def test_the_derived_admin_token_is_stable_per_key_and_differs_between_keys() -> None:
    assert derived_admin_token(SECRET) == derived_admin_token(SECRET)
    assert derived_admin_token(SECRET) != derived_admin_token(bytes(32))
    assert len(derived_admin_token(SECRET)) >= 40
