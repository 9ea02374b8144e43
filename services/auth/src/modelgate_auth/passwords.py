"""argon2id password hashing (pwdlib), with a dummy verification for unknown users
so that timing does not tell an unknown user name from a wrong password."""

from __future__ import annotations

import secrets

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher


class Passwords:
    def __init__(self, time_cost: int = 2, memory_kib: int = 19_456, parallelism: int = 1) -> None:
        self._hash = PasswordHash(
            (Argon2Hasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism),)
        )
        self._dummy = self._hash.hash(secrets.token_urlsafe(24))
        self.verifications = 0  # for tests and metrics: every verify, real or dummy

    def hash(self, password: str) -> str:
        return self._hash.hash(password)

    def verify(self, password: str, stored: str) -> tuple[bool, str | None]:
        """(valid, new hash when the parameters changed and the hash should be replaced)."""
        self.verifications += 1
        try:
            return self._hash.verify_and_update(password, stored)
        except Exception:  # an unreadable stored hash is a failed login, not a 500
            return False, None

    def dummy_verify(self, password: str) -> None:
        self.verify(password, self._dummy)
