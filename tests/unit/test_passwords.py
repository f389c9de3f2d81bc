"""Passwords are stored only as argon2id hashes that the domain's hash pattern accepts."""

from __future__ import annotations

import pytest

from api.passwords import WeakPassword, check_strength, hash_password, verify_password
from commands.users import ChangePassword

pytestmark = pytest.mark.unit


async def test_a_password_round_trips_through_its_argon2id_hash_only() -> None:
    stored = await hash_password("correct horse battery")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert "correct horse" not in stored
    ChangePassword.model_validate({"user_id": "00000000-0000-0000-0000-000000000001",
                                   "password_hash": stored})  # fmt: skip
    assert await verify_password(stored, "correct horse battery")
    assert not await verify_password(stored, "correct horse battery ")
    assert not await verify_password(None, "correct horse battery")
    assert not await verify_password("not a hash", "correct horse battery")
    assert await hash_password("correct horse battery") != stored  # salted


@pytest.mark.parametrize("bad", ["short", " leading blank1", "trailing blank1 ", "nul\x00inside!!"])
def test_weak_passwords_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(WeakPassword) as refused:
        check_strength(bad)
    assert bad not in str(refused.value)
