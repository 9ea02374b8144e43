"""Users, tokens and clients for the crypto suites that run against the live stack.

Every user is new (so per-subject rate limits and earlier runs never interfere), and
every login comes from a loopback address of its own (``/auth/token`` is limited per
client IP).
"""

from __future__ import annotations

import itertools
import os
import random
import secrets
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
FAILED = {"detail": "decryption failed"}

Headers = dict[str, str]


def loopback_addresses() -> Iterator[str]:
    """127.x.y.z addresses no other suite of this run is likely to log in from."""
    second = random.randint(100, 250)
    for third, fourth in itertools.product(range(1, 255), range(1, 255)):
        yield f"127.{second}.{third}.{fourth}"


def make_client(
    base_url: str, ca_file: str, source_ip: str | None = None, headers: Headers | None = None
) -> httpx.Client:
    context = ssl.create_default_context(cafile=ca_file)
    transport = httpx.HTTPTransport(verify=context, local_address=source_ip)
    return httpx.Client(base_url=base_url, transport=transport, headers=headers, timeout=15.0)


class Accounts:
    def __init__(self, base_url: str, ca_file: str, secrets_dir: Path) -> None:
        self.base_url = base_url
        self.ca_file = ca_file
        self.addresses = loopback_addresses()
        self.run = secrets.token_hex(3)
        self.count = itertools.count(1)
        self.created: list[str] = []
        admin_password = (secrets_dir / "admin_password").read_text().strip()
        self.admin = self.login("admin", admin_password)

    def login(self, username: str, password: str) -> Headers:
        with make_client(self.base_url, self.ca_file, next(self.addresses)) as client:
            response = client.post("/auth/token", data={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def new_user(self) -> tuple[str, Headers]:
        username = f"crypto-{self.run}-{next(self.count)}"
        password = secrets.token_urlsafe(18)
        with make_client(self.base_url, self.ca_file, headers=self.admin) as client:
            response = client.post(
                "/auth/users", json={"username": username, "password": password, "role": "user"}
            )
        assert response.status_code == 201, response.text
        self.created.append(username)
        return username, self.login(username, password)

    def remove_all(self) -> None:
        """Delete the users this run made (their ciphertexts are the tests' own)."""
        with make_client(self.base_url, self.ca_file, headers=self.admin) as client:
            for username in self.created:
                response = client.delete(f"/auth/users/{username}")
                assert response.status_code in (200, 204), response.text
        self.created.clear()


def encrypt(client: httpx.Client, headers: Headers, plaintext: str) -> str:
    response = client.post("/crypto/encrypt", json={"plaintext": plaintext}, headers=headers)
    assert response.status_code == 200, response.text
    ciphertext = response.json()["ciphertext"]
    assert isinstance(ciphertext, str)
    return ciphertext


def decrypt(
    client: httpx.Client, headers: Headers, ciphertext: str, **extra: object
) -> httpx.Response:
    body = {"ciphertext": ciphertext, **extra}
    return client.post("/crypto/decrypt", json=body, headers=headers)


def modelgate(*args: str) -> str:
    """Run the operator CLI on this worktree's secrets (the Makefile exports MG_ROOT)."""
    env = {**os.environ, "MG_ROOT": os.environ.get("MG_ROOT", str(ROOT))}
    result = subprocess.run(
        [sys.executable, "-m", "modelgate_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def newest_fernet_key_id() -> int:
    first = modelgate("keys", "list-fernet").splitlines()[0]
    return int(first.split()[0])
