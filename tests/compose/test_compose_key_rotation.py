"""Key rotation on the compose stack, the way docs/operations.md tells an operator to do it:
`docker compose run --rm cli keys ...`, which changes the project folder's keys and hands each
service its new copy (atomically, in the service's own volume). The running services pick
the new keys up on a following request, as on the native stack: no restart."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest
from crypto_helpers import (
    FAILED,
    Accounts,
    decrypt,
    encrypt,
    make_client,
    newest_fernet_key_id,
)

from tests.compose.conftest import ComposeProject

pytestmark = [pytest.mark.compose, pytest.mark.faults]

PROTECTED = [
    ("GET", "/auth/users/me", None),
    ("GET", "/v1/models", None),
    ("POST", "/crypto/encrypt", {"plaintext": "x"}),
]


def statuses(client: httpx.Client, headers: dict[str, str]) -> list[int]:
    return [
        client.request(method, path, json=body, headers=headers).status_code
        for method, path, body in PROTECTED
    ]


def kid(headers: dict[str, str]) -> str:
    return str(pyjwt.get_unverified_header(headers["Authorization"].split()[1])["kid"])


def eventually(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """auth and the token verifiers look at their key files at most once a second."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.5)


def test_rotation_through_the_cli_service_reaches_the_running_services(
    compose_project: ComposeProject, base_url: str, ca_file: str, secrets_dir: Path
) -> None:
    accounts = Accounts(base_url, ca_file, secrets_dir)
    name, password = f"rotation-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    old_fernet = newest_fernet_key_id()
    with make_client(base_url, ca_file) as api:
        created = api.post(
            "/auth/users", json={"username": name, "password": password}, headers=accounts.admin
        )
        assert created.status_code == 201, created.text
        alice = accounts.login(name, password)
        before = encrypt(api, alice, "before the rotation")

        compose_project.cli("keys", "rotate-fernet")
        compose_project.cli("keys", "rotate-jwt")
        assert newest_fernet_key_id() == old_fernet + 1  # the project folder's keyring

        def published() -> list[str]:
            return [k["kid"] for k in api.get("/auth/.well-known/jwks.json").json()["keys"]]

        eventually(lambda: published()[0] != kid(alice), "auth publishes the new key")
        assert kid(alice) in published()
        # The new key signs; tokens of the old one still verify on every service.
        alice_now = accounts.login(name, password)
        assert kid(alice_now) == published()[0]
        eventually(lambda: statuses(api, alice_now) == [200, 200, 200], "new tokens verify")
        assert statuses(api, alice) == [200, 200, 200]
        # Ciphertexts of the old Fernet key decrypt, and move to the new one on request
        # (crypto looks at its keyring file on every request).
        assert decrypt(api, alice, before).json() == {"plaintext": "before the rotation"}
        rotated = api.post("/crypto/rotate", json={"ciphertext": before}, headers=alice)
        assert rotated.status_code == 200
        moved = rotated.json()["ciphertext"]

        compose_project.cli("keys", "retire-fernet", "--key-id", str(old_fernet), "--yes")
        assert newest_fernet_key_id() == old_fernet + 1
        assert decrypt(api, alice, moved).json() == {"plaintext": "before the rotation"}
        assert decrypt(api, alice, before).json() == FAILED  # its key is gone for good
