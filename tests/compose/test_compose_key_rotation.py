"""Key rotation on the compose stack, the way its README tells an operator to do it: the
`modelgate keys` commands on the host, then `docker compose restart` of the services (each
container mounts single secret files, which a rotation replaces)."""

from __future__ import annotations

import secrets
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
    modelgate,
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


def test_host_rotation_takes_effect_after_a_restart_and_old_material_keeps_working(
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

        modelgate("keys", "rotate-fernet")
        modelgate("keys", "rotate-jwt")
        compose_project.compose("restart", "auth", "inference", "crypto")
        compose_project.wait_healthy(base_url, ca_file)

        published = [k["kid"] for k in api.get("/auth/.well-known/jwks.json").json()["keys"]]
        assert published[0] != kid(alice) and kid(alice) in published
        # The new key signs; tokens of the old one still verify on every service.
        alice_now = accounts.login(name, password)
        assert kid(alice_now) == published[0]
        assert statuses(api, alice) == [200, 200, 200]
        assert statuses(api, alice_now) == [200, 200, 200]
        # Ciphertexts of the old Fernet key decrypt, and move to the new one on request.
        assert decrypt(api, alice, before).json() == {"plaintext": "before the rotation"}
        rotated = api.post("/crypto/rotate", json={"ciphertext": before}, headers=alice)
        assert rotated.status_code == 200
        moved = rotated.json()["ciphertext"]

        modelgate("keys", "retire-fernet", "--key-id", str(old_fernet), "--yes")
        compose_project.compose("restart", "crypto")
        compose_project.wait_healthy(base_url, ca_file)
        assert newest_fernet_key_id() == old_fernet + 1
        assert decrypt(api, alice, moved).json() == {"plaintext": "before the rotation"}
        assert decrypt(api, alice, before).json() == FAILED  # its key is gone for good
