"""What the compose stack must keep when its containers are removed and created again:
users (the user database's volume: postgres-data here, auth-data with SQLite), signing and
encryption keys (secrets/ on the host), ciphertexts made before, and revocations (the user
database and Redis's append-only file)."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import httpx
import pytest

from tests.compose.conftest import ComposeProject

pytestmark = [pytest.mark.compose, pytest.mark.faults]


def login(client: httpx.Client, username: str, password: str) -> str:
    """An access token. Behind Docker's port publishing every test client shares one
    address, so a sign-in may meet the per-address limit other tests used up: wait it out."""
    deadline = time.monotonic() + 130
    while True:
        response = client.post("/auth/token", data={"username": username, "password": password})
        if response.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(min(float(response.headers.get("retry-after", "1")), 30))
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_restart_keeps_users_keys_ciphertexts_and_revocations(
    compose_project: ComposeProject,
    client: httpx.Client,
    base_url: str,
    ca_file: str,
    secrets_dir: Path,
) -> None:
    admin = login(client, "admin", (secrets_dir / "admin_password").read_text().strip())
    name, password = f"restart{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    created = client.post(
        "/auth/users", json={"username": name, "password": password}, headers=bearer(admin)
    )
    assert created.status_code == 201, created.text
    user = login(client, name, password)
    plaintext = f"kept across a restart {secrets.token_hex(8)}"
    encrypted = client.post("/crypto/encrypt", json={"plaintext": plaintext}, headers=bearer(user))
    assert encrypted.status_code == 200, encrypted.text
    ciphertext = encrypted.json()["ciphertext"]
    # The admin's token is revoked: it must stay revoked.
    assert client.post("/auth/logout", headers=bearer(admin)).status_code == 204
    assert client.get("/auth/users/me", headers=bearer(admin)).status_code == 401
    kids = [key["kid"] for key in client.get("/auth/.well-known/jwks.json").json()["keys"]]

    # Every container removed and created anew; only the named volumes and the host's
    # secrets/, certs/ and model_store/ carry over.
    compose_project.compose("down", "--timeout", "40")
    assert compose_project.running() == {}
    compose_project.compose("up", "-d")
    compose_project.wait_healthy(base_url, ca_file)

    assert [key["kid"] for key in client.get("/auth/.well-known/jwks.json").json()["keys"]] == kids
    # A token signed before the restart still verifies, at auth and at crypto ...
    assert client.get("/auth/users/me", headers=bearer(user)).json()["username"] == name
    # ... a revoked one is still refused, at auth and at crypto ...
    assert client.get("/auth/users/me", headers=bearer(admin)).status_code == 401
    refused = client.post("/crypto/encrypt", json={"plaintext": "x"}, headers=bearer(admin))
    assert refused.status_code == 401
    # ... the user's password hash is there to sign in again, and the ciphertext made
    # before decrypts for its owner.
    again = login(client, name, password)
    decrypted = client.post(
        "/crypto/decrypt", json={"ciphertext": ciphertext}, headers=bearer(again)
    )
    assert decrypted.status_code == 200, decrypted.text
    assert decrypted.json() == {"plaintext": plaintext}
