"""The Fernet keyring: versioned keys in one secret file, and per-owner keys derived from them.

File (``secrets/fernet_keyring.json``, mode 0600)::

    {"format": 1,
     "keys": [{"id": 2, "key": "<32 random bytes, base64url>", "created": "2025-01-02T03:04:05Z"},
              {"id": 1, "key": "...", "created": "..."}]}

Keys are listed newest first; ``id`` grows by one at every rotation and is never reused.
The newest key encrypts; every key still listed decrypts (``MultiFernet``).

A keyring key is never used as a Fernet key itself. The Fernet key for an owner is
``HKDF-SHA256(ikm=keyring key, salt=none, info="modelgate/crypto/owner-fernet/v2" 0x00 uid)``,
32 bytes (16 signing + 16 encryption), where ``uid`` is the token's ``uid`` claim: the
user's immutable random id, never reused. A ciphertext made for one user does not
authenticate under any other user's key, nor under the key of a later user who was given
the same user name after the first was deleted.

Users who existed before ids did made ciphertexts under keys derived from the user name
(``info="modelgate/crypto/owner-fernet/v1" 0x00 subject``). Their tokens carry
``legacy_owner_keys: true`` (set only for those users, never for a user created later), and
for them those name keys are tried after the id keys, for decryption only: encryption and
``rotate`` always write under the id key. The keyring is the root of trust: whoever can
read the file can derive every owner's key.

This module is shared by the crypto service (read and watch) and the ``modelgate keys``
commands (create, add, retire). It imports nothing from HTTP land.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import fcntl
import functools
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from modelgate_common import private_file_problem, write_private

FORMAT = 1
KEYRING_FILENAME = "fernet_keyring.json"
KEY_BYTES = 32
HKDF_INFO_PREFIX = b"modelgate/crypto/owner-fernet/v2\x00"  # + the owner's uid
LEGACY_HKDF_INFO_PREFIX = b"modelgate/crypto/owner-fernet/v1\x00"  # + the user name
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+={0,2}")


class KeyringError(Exception):
    """The keyring file is missing, unreadable or malformed, or an edit is refused.

    Messages name the file and the problem, never key material.
    """


@dataclass(frozen=True, slots=True)
class KeyringKey:
    id: int
    created: str
    material: bytes = field(repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": base64.urlsafe_b64encode(self.material).decode("ascii"),
            "created": self.created,
        }


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_key(key_id: int) -> KeyringKey:
    return KeyringKey(id=key_id, created=_utc_now(), material=secrets.token_bytes(KEY_BYTES))


def derive_owner_key(material: bytes, owner: str, prefix: bytes = HKDF_INFO_PREFIX) -> bytes:
    """The urlsafe-base64 Fernet key of ``owner`` (a uid; with ``LEGACY_HKDF_INFO_PREFIX``,
    a user name) under one keyring key."""
    info = prefix + owner.encode("utf-8", "surrogatepass")
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)
    return base64.urlsafe_b64encode(raw)


class Keyring:
    """An immutable snapshot of the keyring file, with a small cache of derived owner keys."""

    def __init__(self, keys: list[KeyringKey], cache_size: int = 1024) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        self.keys: tuple[KeyringKey, ...] = tuple(sorted(keys, key=lambda k: k.id, reverse=True))
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise KeyringError("keyring key ids are not unique")
        # One cache per snapshot: a reloaded keyring never serves keys derived from old material.
        self._owner_fernet = functools.lru_cache(maxsize=cache_size)(self._derive_fernet)

    def __repr__(self) -> str:
        return f"Keyring(ids={[k.id for k in self.keys]})"

    @property
    def newest(self) -> KeyringKey:
        return self.keys[0]

    @property
    def ids(self) -> list[int]:
        return [k.id for k in self.keys]

    def _derive_fernet(self, key_id: int, owner: str, prefix: bytes) -> Fernet:
        material = next(k.material for k in self.keys if k.id == key_id)
        return Fernet(derive_owner_key(material, owner, prefix))

    def for_owner(self, uid: str, legacy_name: str | None = None) -> MultiFernet:
        """The owner's Fernet keys, newest first: encrypts with the newest id key, decrypts
        with any; with ``legacy_name`` (only for a token with ``legacy_owner_keys``), the
        keys derived from that user name decrypt too, after every id key."""
        fernets = [self._owner_fernet(k.id, uid, HKDF_INFO_PREFIX) for k in self.keys]
        if legacy_name is not None:
            fernets += [
                self._owner_fernet(k.id, legacy_name, LEGACY_HKDF_INFO_PREFIX) for k in self.keys
            ]
        return MultiFernet(fernets)

    def cache_info(self) -> Any:
        return self._owner_fernet.cache_info()

    # --- file format -------------------------------------------------------------------

    def to_json(self) -> str:
        document = {"format": FORMAT, "keys": [k.as_json() for k in self.keys]}
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, cache_size: int = 1024) -> Keyring:
        try:
            document = json.loads(text)
        except ValueError:
            raise KeyringError("keyring file is not valid JSON") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise KeyringError(f"keyring file is not format {FORMAT}")
        entries = document.get("keys")
        if not isinstance(entries, list) or not entries:
            raise KeyringError("keyring file lists no keys")
        keys = [_parse_entry(entry, position) for position, entry in enumerate(entries)]
        return cls(keys, cache_size)


def _parse_entry(entry: Any, position: int) -> KeyringKey:
    where = f"keyring entry {position}"
    if not isinstance(entry, dict):
        raise KeyringError(f"{where} is not an object")
    key_id, encoded, created = entry.get("id"), entry.get("key"), entry.get("created")
    if not isinstance(key_id, int) or isinstance(key_id, bool) or key_id < 1:
        raise KeyringError(f"{where}: id must be a positive integer")
    if not isinstance(created, str):
        raise KeyringError(f"{where}: created must be a timestamp string")
    if not isinstance(encoded, str):
        raise KeyringError(f"{where}: key must be a base64url string")
    if not _BASE64URL.fullmatch(encoded):
        raise KeyringError(f"{where}: key is not base64url")
    try:
        material = base64.urlsafe_b64decode(encoded)
    except (binascii.Error, ValueError):
        raise KeyringError(f"{where}: key is not base64url") from None
    if len(material) != KEY_BYTES:
        raise KeyringError(f"{where}: key must be {KEY_BYTES} bytes")
    return KeyringKey(id=key_id, created=created, material=material)


# --- reading ---------------------------------------------------------------------------


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyringError(f"keyring {path} is not a regular file")
    problem = private_file_problem(st)
    if problem:
        raise KeyringError(f"keyring {path} is {problem}")


def load_keyring(path: Path, cache_size: int = 1024) -> Keyring:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyringError(f"keyring {path} is missing; run `modelgate init`") from None
    except OSError as exc:
        raise KeyringError(f"keyring {path} cannot be read: {exc.strerror}") from None
    _check_private(path, st)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyringError(f"keyring {path} cannot be read: {type(exc).__name__}") from None
    return Keyring.from_json(text, cache_size)


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    # write_private replaces the file, so the inode changes even within one mtime tick.
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


class KeyringWatcher:
    """The current keyring of a running service, re-read when the file changes.

    ``current()`` costs one ``stat`` call when nothing changed, so a rotation made by
    ``modelgate keys rotate-fernet`` reaches every worker on its next request, without a
    restart. A file that turns unreadable or malformed keeps the last good keyring in
    service and is reported in ``error``.
    """

    def __init__(self, path: Path, cache_size: int = 1024) -> None:
        self.path = path
        self.cache_size = cache_size
        self.keyring: Keyring | None = None
        self.error: str | None = None
        self._seen: tuple[int, int, int, int] | None = None

    def current(self) -> Keyring | None:
        try:
            st = self.path.stat()
        except OSError as exc:
            self.error = f"keyring {self.path} cannot be read: {type(exc).__name__}"
            return self.keyring
        signature = _signature(st)
        if signature != self._seen:
            self._seen = signature
            try:
                self.keyring = load_keyring(self.path, self.cache_size)
                self.error = None
            except KeyringError as exc:
                self.error = str(exc)
        return self.keyring


# --- editing (operator commands) -------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise edits of one keyring (two operators, or init racing a rotation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def create_keyring(path: Path) -> bool:
    """Create a one-key keyring when none exists; return whether one was made."""
    with _locked(path):
        if path.exists():
            return False
        write_private(path, Keyring([new_key(1)]).to_json())
        return True


def add_key(path: Path) -> KeyringKey:
    """Add a new newest key; existing keys stay and keep decrypting."""
    with _locked(path):
        keyring = load_keyring(path)
        key = new_key(keyring.newest.id + 1)
        write_private(path, Keyring([key, *keyring.keys]).to_json())
        return key


def retire_key(path: Path, key_id: int | None = None) -> KeyringKey:
    """Remove one key (the oldest by default). The newest key is never retired.

    Ciphertexts still under the retired key stop decrypting for good: run
    ``POST /crypto/rotate`` on them first.
    """
    with _locked(path):
        keyring = load_keyring(path)
        if len(keyring.keys) == 1:
            raise KeyringError("the keyring holds only one key; rotate first, then retire")
        target_id = keyring.keys[-1].id if key_id is None else key_id
        if target_id == keyring.newest.id:
            raise KeyringError(f"key {target_id} is the newest key and cannot be retired")
        if target_id not in keyring.ids:
            raise KeyringError(f"no key with id {target_id}; keys are {keyring.ids}")
        retired = next(k for k in keyring.keys if k.id == target_id)
        write_private(path, Keyring([k for k in keyring.keys if k.id != target_id]).to_json())
        return retired
