"""RS256 signing keys: private keys in ``<keys_dir>/<kid>.pem`` (0600), the public
set in the JWKS file, newest first.

The newest key signs; older keys stay published so the tokens they signed keep
verifying until they expire; retiring removes a key from the set and deletes
it. Every change is made under a file lock and written atomically, so several
workers and the CLI can share the folder.
"""

from __future__ import annotations

import calendar
import contextlib
import fcntl
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwk
from jose.backends.base import Key
from modelgate_common import ALGORITHM, private_file_problem, write_private, write_public

_KID_TIME = "%Y%m%dT%H%M%SZ"


class KeyStoreError(Exception):
    """A key operation that cannot be done (message is safe to show an operator)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    kid: str
    created_at: int | None
    signing: bool
    has_private_key: bool


def _new_kid(now: float) -> str:
    return f"{time.strftime(_KID_TIME, time.gmtime(now))}-{secrets.token_hex(4)}"


def kid_created_at(kid: str) -> int | None:
    try:
        return calendar.timegm(time.strptime(kid.split("-", 1)[0], _KID_TIME))
    except ValueError:
        return None


def public_jwk(private_pem: bytes, kid: str) -> dict[str, Any]:
    private = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    entry = jwk.construct(public_pem, ALGORITHM).to_dict()
    # Only the public members, whatever the library adds.
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": ALGORITHM,
        "kid": kid,
        "n": entry["n"],
        "e": entry["e"],
    }


class KeyStore:
    def __init__(self, keys_dir: Path, jwks_path: Path, bits: int = 2048) -> None:
        self.keys_dir = keys_dir
        self.jwks_path = jwks_path
        self.bits = bits

    # -- reading -----------------------------------------------------------------
    def read_jwks(self) -> list[dict[str, Any]]:
        try:
            document = json.loads(self.jwks_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        keys = document.get("keys", [])
        if not isinstance(keys, list):
            raise KeyStoreError(f"{self.jwks_path} is not a JWKS document")
        return keys

    def kids(self) -> list[str]:
        """Published key ids, newest first."""
        return [entry["kid"] for entry in self.read_jwks()]

    def private_path(self, kid: str) -> Path:
        return self.keys_dir / f"{kid}.pem"

    def describe(self) -> list[KeyInfo]:
        return [
            KeyInfo(kid, kid_created_at(kid), i == 0, self.private_path(kid).is_file())
            for i, kid in enumerate(self.kids())
        ]

    # -- changing ----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.keys_dir.exists():
            self.keys_dir.mkdir(parents=True, mode=0o700)
        with open(self.keys_dir / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write_jwks(self, keys: list[dict[str, Any]]) -> None:
        write_public(self.jwks_path, json.dumps({"keys": keys}, indent=2) + "\n")

    def _add_key(self) -> str:
        now = time.time()
        kid = _new_kid(now)
        key = rsa.generate_private_key(public_exponent=65537, key_size=self.bits)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Private key first: a published kid always has its private key.
        write_private(self.private_path(kid), pem)
        self._write_jwks([public_jwk(pem, kid), *self.read_jwks()])
        return kid

    def ensure(self) -> str | None:
        """Create a signing key when there is none usable; return its kid if one was made."""
        if self._usable():
            return None  # no lock, no write: works on a read-only secrets mount
        with self._locked():
            if self._usable():
                return None
            return self._add_key()

    def _usable(self) -> bool:
        kids = self.kids()
        return bool(kids) and self.private_path(kids[0]).is_file()

    def rotate(self) -> str:
        """Add a new newest key: it signs from now on; older keys keep verifying."""
        with self._locked():
            return self._add_key()

    def retire(self, kid: str, min_age: int, force: bool = False) -> None:
        """Stop trusting ``kid``. Refuses the newest key, and a key that may still have
        live tokens (replaced less than ``min_age`` seconds ago) unless forced."""
        with self._locked():
            keys = self.read_jwks()
            kids = [entry["kid"] for entry in keys]
            if kid not in kids:
                raise KeyStoreError(f"no published key {kid!r}")
            position = kids.index(kid)
            if position == 0:
                raise KeyStoreError(f"{kid} is the newest (signing) key; rotate first")
            replaced_at = kid_created_at(kids[position - 1])
            if replaced_at is None:
                newer = self.private_path(kids[position - 1])
                replaced_at = int(newer.stat().st_mtime) if newer.exists() else 0
            wait = replaced_at + min_age - int(time.time())
            if wait > 0 and not force:
                raise KeyStoreError(
                    f"tokens signed by {kid} may still be valid for {wait} s; "
                    "retire it later or pass --force"
                )
            self._write_jwks([entry for entry in keys if entry["kid"] != kid])
            self.private_path(kid).unlink(missing_ok=True)


class Signer:
    """The newest key, re-read when the JWKS file changes (rotation by the CLI
    takes effect in running workers without a restart)."""

    def __init__(self, store: KeyStore, check_interval: float = 1.0) -> None:
        self.store = store
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._checked_at = 0.0
        self._current: tuple[str, Key] | None = None

    def _file_stamp(self) -> tuple[int, int, int]:
        st = self.store.jwks_path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def load(self) -> None:
        with self._lock:
            stamp = self._file_stamp()
            kids = self.store.kids()
            if not kids:
                raise KeyStoreError("no signing key; run `modelgate init`")
            path = self.store.private_path(kids[0])
            # Whoever can read the signing key can sign any token: held as every secret is.
            problem = private_file_problem(path.stat())
            if problem:
                raise KeyStoreError(f"signing key {path} is {problem}")
            pem = path.read_bytes()
            self._current = (kids[0], jwk.construct(pem, ALGORITHM))
            self._stamp = stamp
            self._checked_at = time.monotonic()

    def current(self) -> tuple[str, Key]:
        if self._current is None:
            self.load()
        elif time.monotonic() - self._checked_at >= self.check_interval:
            self._checked_at = time.monotonic()
            try:
                changed = self._file_stamp() != self._stamp
            except OSError:
                changed = False  # keep signing with the key we have
            if changed:
                self.load()
        assert self._current is not None
        return self._current
