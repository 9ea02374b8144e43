"""The whole stack stopped and started (`make down` / `make up`): what users and
operators rely on is all still there — users, signing keys, tokens not yet
expired, revocations, Fernet keys and ciphertexts, the model store."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, bearer, make_client

pytestmark = [pytest.mark.faults, pytest.mark.native, pytest.mark.slow]

IRIS = {
    "instances": [
        {"sepal_length": 6.3, "sepal_width": 3.3, "petal_length": 6.0, "petal_width": 2.5}
    ]
}


def _make(target: str) -> None:
    done = subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _snapshot(client: httpx.Client, admin_token: str, token: str) -> dict[str, Any]:
    admin, user = bearer(admin_token), bearer(token)
    return {
        "jwks": client.get("/auth/.well-known/jwks.json").json(),
        "users": sorted(u["username"] for u in client.get("/auth/users", headers=admin).json()),
        "models": client.get("/v1/models", headers=user).json(),
        "prediction": client.post("/v1/models/iris/predict", json=IRIS, headers=user).json(),
    }


def test_whole_stack_restart_keeps_users_keys_tokens_revocations_ciphertexts_models(
    base_url: str,
    ca_file: str,
    client: httpx.Client,
    admin_token: str,
    make_user: Callable[..., dict[str, str]],
    login: Callable[..., dict[str, Any]],
) -> None:
    user = make_user()
    kept = login(user["username"], user["password"])
    revoked = login(user["username"], user["password"])
    logout = client.post("/auth/logout", headers=bearer(revoked["access_token"]))
    assert logout.status_code == 204
    assert client.get("/auth/users/me", headers=bearer(revoked["access_token"])).status_code == 401
    encrypted = client.post(
        "/crypto/encrypt",
        json={"plaintext": "kept across restarts"},
        headers=bearer(kept["access_token"]),
    )
    assert encrypted.status_code == 200, encrypted.text
    before = _snapshot(client, admin_token, kept["access_token"])
    assert user["username"] in before["users"]

    try:
        _make("down")
    finally:
        _make("up")  # the tests after this one need the stack, whatever happened

    with make_client(base_url, ca_file) as again:  # new connections to the new processes
        after = _snapshot(again, admin_token, kept["access_token"])
        assert after == before  # users, signing keys, model store and its answers
        me = again.get("/auth/users/me", headers=bearer(kept["access_token"]))
        assert me.status_code == 200 and me.json()["username"] == user["username"]
        # The revoked token stays revoked; so does its refresh family.
        gone = again.get("/auth/users/me", headers=bearer(revoked["access_token"]))
        assert gone.status_code == 401
        spent = again.post("/auth/refresh", json={"refresh_token": revoked["refresh_token"]})
        assert spent.status_code == 401
        # The kept session's refresh token still works.
        renewed = again.post("/auth/refresh", json={"refresh_token": kept["refresh_token"]})
        assert renewed.status_code == 200, renewed.text
        # Fernet keyring: the ciphertext made before decrypts for its owner.
        decrypted = again.post(
            "/crypto/decrypt",
            json={"ciphertext": encrypted.json()["ciphertext"]},
            headers=bearer(renewed.json()["access_token"]),
        )
        assert decrypted.status_code == 200, decrypted.text
        assert decrypted.json() == {"plaintext": "kept across restarts"}
