"""Encrypt, decrypt and rotate for one owner: plain logic, no HTTP.

Owner binding: every operation uses the Fernet keys derived for the caller's user id (the
token's ``uid`` claim, see ``fernet_keyring``), never for the user name alone. Nobody, an
admin included, can decrypt another user's ciphertext through the API; see the package
docstring for why.

Cost: Fernet work on the largest plaintext (64 KiB) takes about 0.2 ms to encrypt and
0.3 ms to decrypt on one core. ``cryptography`` holds the GIL while it works, so a
thread would add overhead without adding parallelism; the work runs inline and the
plaintext cap bounds how long it can hold the event loop. Parallelism comes from the
gunicorn workers.
"""

from __future__ import annotations

import time
from typing import NoReturn

from cryptography.fernet import InvalidToken, MultiFernet
from modelgate_common import (
    DECRYPTION_FAILURES,
    Principal,
    ServiceError,
    ServiceUnavailable,
    audit,
)

from .config import CryptoSettings
from .fernet_keyring import Keyring, KeyringWatcher
from .tokens import malformed_reason

_MAX_CLOCK_SKEW = 60  # seconds; the Fernet library refuses tokens further in the future


class DecryptionFailed(ServiceError):
    """Every decryption failure looks the same to the client; the audit log says why."""

    status_code = 400
    message = "decryption failed"


class PlaintextRejected(ServiceError):
    status_code = 422
    message = "plaintext rejected"


class CryptoService:
    def __init__(self, settings: CryptoSettings, watcher: KeyringWatcher) -> None:
        self.max_plaintext_bytes = settings.max_plaintext_bytes
        self.max_ciphertext_chars = settings.max_ciphertext_chars
        self.watcher = watcher

    def _keyring(self) -> Keyring:
        keyring = self.watcher.current()
        if keyring is None:
            raise ServiceUnavailable("encryption keys are not available")
        return keyring

    def _owner(self, owner: Principal) -> MultiFernet:
        legacy_name = owner.subject if owner.legacy_owner_keys else None
        return self._keyring().for_owner(owner.user_id, legacy_name)

    def encrypt(self, owner: Principal, plaintext: str) -> str:
        """Empty plaintext is allowed: it is a value like any other and round-trips to ``""``."""
        try:
            data = plaintext.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates sent as JSON escapes
            raise PlaintextRejected("plaintext must be valid UTF-8 text") from None
        if len(data) > self.max_plaintext_bytes:
            raise PlaintextRejected(
                f"plaintext is longer than {self.max_plaintext_bytes} UTF-8 bytes"
            )
        return self._owner(owner).encrypt(data).decode("ascii")

    def decrypt(self, owner: Principal, ciphertext: str, ttl: int | None = None) -> str:
        self._check_shape(owner, ciphertext, "decrypt")
        fernet = self._owner(owner)
        try:
            data = fernet.decrypt(ciphertext, ttl)
        except InvalidToken:
            self._fail(owner, "decrypt", self._classify(fernet, ciphertext, ttl))
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:  # authentic but not made by encrypt(): a forged key?
            self._fail(owner, "decrypt", "not_utf8")

    def rotate(self, owner: Principal, ciphertext: str) -> str:
        """The same plaintext, under the newest id key (a legacy name-key ciphertext moves
        to the id key); the token keeps its original timestamp, so a ``ttl`` still counts
        from the first encryption."""
        self._check_shape(owner, ciphertext, "rotate")
        try:
            return self._owner(owner).rotate(ciphertext).decode("ascii")
        except InvalidToken:
            self._fail(owner, "rotate", "not_authentic")

    def _check_shape(self, owner: Principal, ciphertext: str, operation: str) -> None:
        shape = malformed_reason(ciphertext, self.max_ciphertext_chars)
        if shape is not None:
            self._fail(owner, operation, "malformed", shape=shape)

    @staticmethod
    def _classify(fernet: MultiFernet, ciphertext: str, ttl: int | None) -> str:
        """Reason class of a failed decryption, for the audit log only.

        Tampered, truncated, another owner's, and retired-key ciphertexts all fail the
        HMAC and cannot be told apart: "not_authentic". With a ``ttl`` the library checks
        the timestamp first, so an authentic token is told apart by its timestamp.
        """
        if ttl is None:
            return "not_authentic"
        try:
            timestamp = fernet.extract_timestamp(ciphertext)
        except InvalidToken:
            return "not_authentic"
        now = int(time.time())
        if timestamp + ttl < now:
            return "expired"
        if timestamp > now + _MAX_CLOCK_SKEW:
            return "future_timestamp"
        return "not_authentic"

    @staticmethod
    def _fail(owner: Principal, operation: str, reason: str, **fields: str) -> NoReturn:
        # Identifiers only: the plaintext and ciphertext never reach a log line.
        DECRYPTION_FAILURES.labels(reason).inc()
        audit(
            "crypto.decryption_failed",
            user=owner.subject,
            uid=owner.user_id,
            operation=operation,
            reason=reason,
            **fields,
        )
        raise DecryptionFailed()
