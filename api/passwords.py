"""Passwords: argon2id hashes only (RFC 9106's second recommended profile), checked off the loop.

Hashing costs ~tens of milliseconds of CPU on purpose, so both functions run in a worker thread:
a login must not stall every other request of the event loop. An unknown e-mail is checked
against a fixed dummy hash, so its answer takes as long as a wrong password's.
"""

from __future__ import annotations

import asyncio
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH: Final = 10
MAX_LENGTH: Final = 1024
# m = 19 MiB, t = 2, p = 1: OWASP's argon2id baseline; the parameters travel in each hash.
_HASHER: Final = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY: Final = _HASHER.hash("zapflow: no such user, same cost as a wrong password")


class WeakPassword(ValueError):
    """A password this platform does not accept (the message says why, never the password)."""


def check_strength(password: str) -> None:
    if not MIN_LENGTH <= len(password) <= MAX_LENGTH:
        raise WeakPassword(f"a password has {MIN_LENGTH} to {MAX_LENGTH} characters")
    if password.strip() != password or "\x00" in password:
        raise WeakPassword("a password may not start or end with blanks or contain NUL")


def hash_password_sync(password: str) -> str:
    check_strength(password)
    return _HASHER.hash(password)


async def hash_password(password: str) -> str:
    """The argon2id hash of an acceptable password (raises `WeakPassword` otherwise)."""
    check_strength(password)
    return await asyncio.to_thread(_HASHER.hash, password)


def _verify(stored: str | None, password: str) -> bool:
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def verify_password(stored: str | None, password: str) -> bool:
    """Whether `password` matches `stored`; None (no user, no password set) is never a match,
    after the same work as a mismatch."""
    if len(password) > MAX_LENGTH:
        return False
    return await asyncio.to_thread(_verify, stored, password)
