"""The keyring file, per-owner key derivation and reloading, without HTTP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.fernet import InvalidToken
from modelgate_crypto.fernet_keyring import (
    Keyring,
    KeyringError,
    KeyringWatcher,
    add_key,
    create_keyring,
    derive_owner_key,
    load_keyring,
    new_key,
    retire_key,
)


def test_create_makes_one_private_key_once(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "fernet_keyring.json"
    assert create_keyring(path) is True
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    assert create_keyring(path) is False
    assert path.read_bytes() == first
    keyring = load_keyring(path)
    assert keyring.ids == [1]
    document = json.loads(first)
    assert document["format"] == 1
    assert set(document["keys"][0]) == {"id", "key", "created"}
    assert document["keys"][0]["created"].endswith("Z")


def test_add_and_retire_keep_newest_first(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keyring(path)
    assert add_key(path).id == 2
    assert add_key(path).id == 3
    assert load_keyring(path).ids == [3, 2, 1]
    assert retire_key(path).id == 1  # the oldest by default
    assert load_keyring(path).ids == [3, 2]
    assert add_key(path).id == 4  # ids are never reused
    assert retire_key(path, 3).id == 3
    assert load_keyring(path).ids == [4, 2]
    assert path.stat().st_mode & 0o777 == 0o600


def test_retire_refuses_the_newest_the_only_and_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keyring(path)
    with pytest.raises(KeyringError, match="only one key"):
        retire_key(path)
    add_key(path)
    with pytest.raises(KeyringError, match="newest"):
        retire_key(path, 2)
    with pytest.raises(KeyringError, match="no key with id 7"):
        retire_key(path, 7)
    assert load_keyring(path).ids == [2, 1]


def test_owner_keys_differ_by_subject_and_by_key() -> None:
    one, two = new_key(1), new_key(2)
    alice_1 = derive_owner_key(one.material, "alice")
    assert alice_1 == derive_owner_key(one.material, "alice")
    assert alice_1 != derive_owner_key(one.material, "bob")
    assert alice_1 != derive_owner_key(two.material, "alice")
    assert derive_owner_key(one.material, "al") != alice_1
    assert derive_owner_key(one.material, "") != alice_1


def test_a_token_for_one_owner_does_not_decrypt_for_another() -> None:
    keyring = Keyring([new_key(1)])
    token = keyring.for_owner("alice").encrypt(b"secret")
    assert keyring.for_owner("alice").decrypt(token) == b"secret"
    with pytest.raises(InvalidToken):
        keyring.for_owner("bob").decrypt(token)


def test_old_keys_decrypt_and_the_newest_encrypts() -> None:
    one = new_key(1)
    old = Keyring([one])
    token = old.for_owner("alice").encrypt(b"v1")
    rotated = Keyring([new_key(2), one])
    assert rotated.for_owner("alice").decrypt(token) == b"v1"
    fresh = rotated.for_owner("alice").encrypt(b"v2")
    with pytest.raises(InvalidToken):
        old.for_owner("alice").decrypt(fresh)


def test_derived_keys_are_cached_per_key_and_subject() -> None:
    keyring = Keyring([new_key(2), new_key(1)], cache_size=8)
    for _ in range(5):
        keyring.for_owner("alice")
    info = keyring.cache_info()
    assert (info.misses, info.hits) == (2, 8)
    for n in range(20):
        keyring.for_owner(f"user{n}")
    assert keyring.cache_info().currsize == 8


def test_key_material_never_appears_in_reprs() -> None:
    key = new_key(1)
    encoded = key.as_json()["key"]
    keyring = Keyring([key])
    for text in (repr(key), str(key), repr(keyring), str(keyring)):
        assert encoded not in text
        assert repr(key.material) not in text


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"format": 2, "keys": []}', "not format 1"),
        ('{"format": 1, "keys": []}', "lists no keys"),
        ('{"format": 1, "keys": [1]}', "not an object"),
        ('{"format": 1, "keys": [{"id": 0, "key": "", "created": "x"}]}', "positive integer"),
        ('{"format": 1, "keys": [{"id": true, "key": "", "created": "x"}]}', "positive integer"),
        ('{"format": 1, "keys": [{"id": 1, "key": "AAAA", "created": "x"}]}', "32 bytes"),
        ('{"format": 1, "keys": [{"id": 1, "key": "@@@", "created": "x"}]}', "base64url"),
        ('{"format": 1, "keys": [{"id": 1, "key": 5, "created": "x"}]}', "base64url string"),
        ('{"format": 1, "keys": [{"id": 1, "key": "AAAA"}]}', "created"),
    ],
)
def test_malformed_files_are_refused_without_echoing_keys(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "k.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyringError, match=message):
        load_keyring(path)


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keyring(path)
    document = json.loads(path.read_text())
    document["keys"].append(dict(document["keys"][0]))
    path.write_text(json.dumps(document))
    with pytest.raises(KeyringError, match="not unique"):
        load_keyring(path)


def test_a_keyring_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    create_keyring(path)
    path.chmod(0o644)
    with pytest.raises(KeyringError, match="readable by others"):
        load_keyring(path)


def test_a_keyring_readable_by_its_own_group_is_accepted_as_kubernetes_mounts_it(
    tmp_path: Path,
) -> None:
    """A Secret volume with fsGroup: 0440, the pod's group, reached through ..data links."""
    stamp = tmp_path / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir()
    create_keyring(stamp / "k.json")
    os.chown(stamp / "k.json", -1, os.getegid())
    (stamp / "k.json").chmod(0o440)
    (tmp_path / "..data").symlink_to(stamp.name)
    (tmp_path / "k.json").symlink_to("..data/k.json")
    assert load_keyring(tmp_path / "k.json").ids == [1]
    (stamp / "k.json").chmod(0o460)
    with pytest.raises(KeyringError, match="writable or executable by its group"):
        load_keyring(tmp_path / "k.json")


def test_a_missing_keyring_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="modelgate init"):
        load_keyring(tmp_path / "absent.json")


def test_watcher_picks_up_rotation_and_keeps_last_good_on_corruption(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    watcher = KeyringWatcher(path)
    assert watcher.current() is None
    assert watcher.error is not None
    create_keyring(path)
    first = watcher.current()
    assert first is not None and first.ids == [1]
    assert watcher.current() is first  # unchanged file: same snapshot, no re-read
    add_key(path)
    second = watcher.current()
    assert second is not None and second.ids == [2, 1]
    path.write_text("garbage")
    assert watcher.current() is second
    assert watcher.error is not None and "JSON" in watcher.error
    os.unlink(path)
    assert watcher.current() is second
    create_keyring(path)
    third = watcher.current()
    assert third is not None and third is not second and watcher.error is None
