"""The crypto service through nginx: persistence across workers, owner binding,
uniform failures, TTL and key rotation with the operator commands."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
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


@pytest.fixture(scope="module")
def accounts(base_url: str, ca_file: str, secrets_dir: Path) -> Iterator[Accounts]:
    made = Accounts(base_url, ca_file, secrets_dir)
    yield made
    made.remove_all()


@pytest.fixture
def api(base_url: str, ca_file: str) -> Iterator[httpx.Client]:
    with make_client(base_url, ca_file) as client:
        yield client


def test_200_values_each_decrypt_on_a_new_connection(
    accounts: Accounts, base_url: str, ca_file: str
) -> None:
    """Every worker shares the keyring: a value made on one connection (one worker)
    decrypts on a fresh connection, which may land on any worker."""
    users = [accounts.new_user()[1] for _ in range(10)]  # 20 values each: under 60/minute
    made: list[tuple[dict[str, str], str, str]] = []
    with make_client(base_url, ca_file) as client:
        for n in range(200):
            headers = users[n % len(users)]
            plaintext = f"value {n}: {'é' * (n % 7)} {n * 7919}"
            made.append((headers, plaintext, encrypt(client, headers, plaintext)))
    assert len({ciphertext for _, _, ciphertext in made}) == 200
    failures = []
    for headers, plaintext, ciphertext in made:
        with make_client(base_url, ca_file) as fresh:
            response = decrypt(fresh, headers, ciphertext)
        if response.status_code != 200 or response.json() != {"plaintext": plaintext}:
            failures.append((plaintext, response.status_code))
    assert failures == []


def test_a_re_created_user_name_cannot_decrypt_the_old_owners_data(
    accounts: Accounts, api: httpx.Client
) -> None:
    """Delete a user, create one with the same name: the old ciphertext gives the newcomer
    the same 400 as any other user (owner keys follow the immutable user id)."""
    name, first = accounts.new_user()
    ciphertext = encrypt(api, first, "the first owner's secret")
    assert api.delete(f"/auth/users/{name}", headers=accounts.admin).status_code == 204
    password = secrets.token_urlsafe(18)
    created = api.post(
        "/auth/users",
        json={"username": name, "password": password, "role": "user"},
        headers=accounts.admin,
    )
    assert created.status_code == 201, created.text
    second = accounts.login(name, password)
    for path in ("/crypto/decrypt", "/decrypt/", "/crypto/rotate"):
        response = api.post(path, json={"ciphertext": ciphertext}, headers=second)
        assert response.status_code == 400, path
        assert response.json() == FAILED
    mine = encrypt(api, second, "the second owner's secret")
    assert decrypt(api, second, mine).json() == {"plaintext": "the second owner's secret"}


def test_seed_aliases(accounts: Accounts, api: httpx.Client) -> None:
    _, alice = accounts.new_user()
    response = api.post("/encrypt/", json={"plaintext": "seed"}, headers=alice)
    assert response.status_code == 200
    ciphertext = response.json()["ciphertext"]
    response = api.post("/decrypt/", json={"ciphertext": ciphertext}, headers=alice)
    assert response.status_code == 200
    assert response.json() == {"plaintext": "seed"}


def test_user_b_cannot_decrypt_user_as_ciphertext(
    accounts: Accounts, api: httpx.Client, var_dir: Path
) -> None:
    _, alice = accounts.new_user()
    bob_name, bob = accounts.new_user()
    ciphertext = encrypt(api, alice, "alice only")
    for path in ("/crypto/decrypt", "/decrypt/", "/crypto/rotate"):
        response = api.post(path, json={"ciphertext": ciphertext}, headers=bob)
        assert response.status_code == 400, path
        assert response.json() == FAILED
    # Not even an admin: owner keys come from the token subject, not the role.
    assert decrypt(api, accounts.admin, ciphertext).json() == FAILED
    assert decrypt(api, alice, ciphertext).json() == {"plaintext": "alice only"}
    events = _audit_events(var_dir, bob_name)
    assert [e["reason"] for e in events] == ["not_authentic"] * 3


def _flip(ciphertext: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(ciphertext))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode()


def test_bad_ciphertexts_are_refused_alike(
    accounts: Accounts, api: httpx.Client, var_dir: Path
) -> None:
    name, alice = accounts.new_user()
    secret = "never in a log line"
    good = encrypt(api, alice, secret)
    raw = base64.urlsafe_b64decode(good)
    bad = {
        "tampered": _flip(good, 40),
        "tampered signature": _flip(good, len(raw) - 1),
        "truncated": good[:-10],
        "truncated by a block": base64.urlsafe_b64encode(raw[:-16]).decode(),
        "empty": "",
        "huge": "gAAAAA" + "A" * 300_000,
        "not fernet": "hello, world",
        "not base64": "gAAAAAB!" + good[8:],
        "wrong version": _flip(good, 0),
    }
    for label, ciphertext in bad.items():
        response = decrypt(api, alice, ciphertext)
        assert response.status_code == 400, label
        assert response.json() == FAILED, label
    events = _audit_events(var_dir, name)
    assert len(events) == len(bad)
    assert {e["reason"] for e in events} == {"malformed", "not_authentic"}
    audit_text = (var_dir / "log" / "audit.jsonl").read_text()
    assert secret not in audit_text
    assert good[10:50] not in audit_text


def test_expired_ttl_is_refused(accounts: Accounts, api: httpx.Client) -> None:
    _, alice = accounts.new_user()
    ciphertext = encrypt(api, alice, "short-lived")
    assert decrypt(api, alice, ciphertext, ttl=3600).json() == {"plaintext": "short-lived"}
    time.sleep(2.5)  # Fernet timestamps are whole seconds: age >= 2 s is past a 1 s ttl
    response = decrypt(api, alice, ciphertext, ttl=1)
    assert response.status_code == 400
    assert response.json() == FAILED
    assert decrypt(api, alice, ciphertext, ttl=3600).status_code == 200


def test_requests_are_validated(accounts: Accounts, api: httpx.Client) -> None:
    _, alice = accounts.new_user()
    for body in (
        {"plaintext": "x", "extra": True},
        {"plaintext": 5},
        {"plaintext": "x" * 65_537},
    ):
        assert api.post("/crypto/encrypt", json=body, headers=alice).status_code == 422
    for body in ({"ciphertext": "x", "ttl": "60"}, {"ciphertext": "x", "ttl": 0}):
        assert api.post("/crypto/decrypt", json=body, headers=alice).status_code == 422
    response = api.post("/crypto/encrypt", json={"plaintext": "x"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


# The compose stack mounts the keyring as a single file, which a rotation replaces: there
# the service picks it up on a restart (tests/compose/test_compose_key_rotation.py), not live.
@pytest.mark.native
def test_rotation_keeps_every_ciphertext_readable_until_its_key_is_retired(
    accounts: Accounts, api: httpx.Client
) -> None:
    _, alice = accounts.new_user()
    old_key = newest_fernet_key_id()
    before = {f"before {n}": encrypt(api, alice, f"before {n}") for n in range(5)}

    modelgate("keys", "rotate-fernet")
    assert newest_fernet_key_id() == old_key + 1
    # No restart: every worker reads the new keyring on its next request.
    for plaintext, ciphertext in before.items():
        assert decrypt(api, alice, ciphertext).json() == {"plaintext": plaintext}
    after = encrypt(api, alice, "after")
    rotated = {}
    for plaintext, ciphertext in before.items():
        response = api.post("/crypto/rotate", json={"ciphertext": ciphertext}, headers=alice)
        assert response.status_code == 200
        rotated[plaintext] = response.json()["ciphertext"]
        assert decrypt(api, alice, rotated[plaintext]).json() == {"plaintext": plaintext}

    modelgate("keys", "retire-fernet", "--key-id", str(old_key), "--yes")
    for plaintext, ciphertext in rotated.items():
        assert decrypt(api, alice, ciphertext).json() == {"plaintext": plaintext}
    assert decrypt(api, alice, after).json() == {"plaintext": "after"}
    for ciphertext in before.values():  # left on the retired key: gone for good
        assert decrypt(api, alice, ciphertext).json() == FAILED


def _audit_events(var_dir: Path, user: str) -> list[dict[str, str]]:
    events = []
    for line in (var_dir / "log" / "audit.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("audit") == "crypto.decryption_failed" and event.get("user") == user:
            events.append(event)
    return events
