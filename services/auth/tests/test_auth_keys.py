"""Signing keys: files and modes, rotation with tokens of both keys in flight, retirement."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from auth_testlib import ADMIN_PASSWORD, bearer, login
from fastapi.testclient import TestClient
from jose import jwt
from modelgate_auth.config import AuthSettings
from modelgate_auth.keys import KeyStore, KeyStoreError, Signer


def _store(settings: AuthSettings) -> KeyStore:
    return KeyStore(settings.jwt_keys_path, settings.common.jwks_path)


def _kid(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def _fast_reload(client: TestClient) -> None:
    # Rotation is picked up within a second; tests don't wait for it.
    client.app.state.auth_service.signer.check_interval = 0  # type: ignore[attr-defined]
    client.app.state.verifier.keyset.min_reload_interval = 0  # type: ignore[attr-defined]


def test_key_files_and_modes(client: TestClient, settings: AuthSettings) -> None:
    store = _store(settings)
    kids = store.kids()
    assert len(kids) == 1
    private = store.private_path(kids[0])
    assert private.stat().st_mode & 0o777 == 0o600
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    document = json.loads(settings.common.jwks_path.read_text())
    for entry in document["keys"]:
        assert set(entry) == {"kty", "use", "alg", "kid", "n", "e"}  # no private member
    assert store.ensure() is None  # idempotent


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(
    client: TestClient, settings: AuthSettings
) -> None:
    _fast_reload(client)
    store = _store(settings)
    old_token = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
    old_kid = _kid(old_token)
    new_kid = store.rotate()
    assert store.kids() == [new_kid, old_kid]
    new_token = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
    assert _kid(new_token) == new_kid
    for token in (old_token, new_token):
        assert client.get("/auth/users/me", headers=bearer(token)).status_code == 200
    published = client.get("/auth/.well-known/jwks.json").json()["keys"]
    assert [k["kid"] for k in published] == [new_kid, old_kid]


def test_retire_refuses_the_newest_key_and_unknown_keys(
    client: TestClient, settings: AuthSettings
) -> None:
    store = _store(settings)
    with pytest.raises(KeyStoreError, match="newest"):
        store.retire(store.kids()[0], min_age=0, force=True)
    with pytest.raises(KeyStoreError, match="no published key"):
        store.retire("no-such-kid", min_age=0)
    assert len(store.kids()) == 1


def test_retire_waits_for_tokens_of_the_old_key_to_expire(
    client: TestClient, settings: AuthSettings
) -> None:
    store = _store(settings)
    old_kid = store.kids()[0]
    store.rotate()
    with pytest.raises(KeyStoreError, match="may still be valid"):
        store.retire(old_kid, min_age=settings.access_token_ttl + 30)
    assert old_kid in store.kids()


def test_retired_key_stops_verifying(client: TestClient, settings: AuthSettings) -> None:
    _fast_reload(client)
    store = _store(settings)
    old_token = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
    old_kid = _kid(old_token)
    assert client.get("/auth/users/me", headers=bearer(old_token)).status_code == 200  # cached
    new_kid = store.rotate()
    new_token = login(client, "admin", ADMIN_PASSWORD).json()["access_token"]
    store.retire(old_kid, min_age=0)
    assert store.kids() == [new_kid]
    assert not store.private_path(old_kid).exists()
    assert client.get("/auth/users/me", headers=bearer(old_token)).status_code == 401
    assert client.get("/auth/users/me", headers=bearer(new_token)).status_code == 200


def test_missing_private_key_of_the_newest_is_replaced(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "jwt", tmp_path / "jwks.json")
    first = store.ensure()
    assert first is not None
    store.private_path(first).unlink()
    second = store.ensure()
    assert second is not None and second != first
    assert store.kids() == [second, first]


def test_ensure_writes_nothing_when_a_key_exists(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "jwt", tmp_path / "jwks.json")
    store.ensure()
    (tmp_path / "jwt" / ".lock").unlink()
    (tmp_path / "jwt").chmod(0o500)  # a read-only secrets mount, as in the containers
    try:
        assert store.ensure() is None
        assert not (tmp_path / "jwt" / ".lock").exists()
    finally:
        (tmp_path / "jwt").chmod(0o700)


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o620])
def test_a_signing_key_others_can_read_or_change_is_refused(tmp_path: Path, mode: int) -> None:
    """Whoever reads the signing key signs any token (an admin's too): it is held to the
    rules of every secret file, and the service does not sign with it."""
    store = KeyStore(tmp_path / "jwt", tmp_path / "jwks.json")
    kid = store.ensure()
    assert kid is not None
    store.private_path(kid).chmod(mode)
    with pytest.raises(KeyStoreError, match="signing key"):
        Signer(store).load()
    store.private_path(kid).chmod(0o600)
    signer = Signer(store)
    signer.load()
    assert signer.current()[0] == kid
