"""The crypto HTTP API in-process: owner binding, uniform failures, limits, scopes, rotation."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from modelgate_common import write_private
from modelgate_common.testing import default_uid
from modelgate_crypto.config import CryptoSettings
from modelgate_crypto.fernet_keyring import (
    LEGACY_HKDF_INFO_PREFIX,
    add_key,
    derive_owner_key,
    load_keyring,
    retire_key,
)
from modelgate_crypto.main import create_app
from modelgate_crypto.schemas import MAX_TTL_SECONDS, DecryptRequest

pytestmark = pytest.mark.anyio

Auth = Callable[..., dict[str, str]]
FAILED = {"detail": "decryption failed"}


async def encrypt(client: httpx.AsyncClient, headers: dict[str, str], text: str) -> str:
    response = await client.post("/crypto/encrypt", json={"plaintext": text}, headers=headers)
    assert response.status_code == 200, response.text
    ciphertext = response.json()["ciphertext"]
    assert isinstance(ciphertext, str)
    return ciphertext


async def decrypt(
    client: httpx.AsyncClient, headers: dict[str, str], ciphertext: str, **extra: object
) -> httpx.Response:
    body = {"ciphertext": ciphertext, **extra}
    return await client.post("/crypto/decrypt", json=body, headers=headers)


@pytest.mark.parametrize(
    "text",
    ["hello", "", "ünïcødé ✓ 🔐", "x" * 65_536, "a\u0000b\n"],
    ids=["ascii", "empty", "unicode", "largest", "control"],
)
async def test_round_trip(client: httpx.AsyncClient, auth: Auth, text: str) -> None:
    alice = auth("alice")
    ciphertext = await encrypt(client, alice, text)
    assert text not in ciphertext or text == ""
    response = await decrypt(client, alice, ciphertext)
    assert response.status_code == 200
    assert response.json() == {"plaintext": text}


async def test_each_encryption_is_fresh(client: httpx.AsyncClient, auth: Auth) -> None:
    alice = auth("alice")
    assert await encrypt(client, alice, "same") != await encrypt(client, alice, "same")


async def test_seed_aliases_take_the_seed_bodies(client: httpx.AsyncClient, auth: Auth) -> None:
    alice = auth("alice")
    response = await client.post("/encrypt/", json={"plaintext": "seed"}, headers=alice)
    assert response.status_code == 200
    assert set(response.json()) == {"ciphertext"}
    ciphertext = response.json()["ciphertext"]
    response = await client.post("/decrypt/", json={"ciphertext": ciphertext}, headers=alice)
    assert response.json() == {"plaintext": "seed"}
    # The aliases and the new paths share keys.
    assert (await decrypt(client, alice, ciphertext)).json() == {"plaintext": "seed"}


async def test_another_user_cannot_decrypt(
    client: httpx.AsyncClient, auth: Auth, audit_log: Any
) -> None:
    ciphertext = await encrypt(client, auth("alice"), "alice's secret")
    response = await decrypt(client, auth("bob"), ciphertext)
    assert response.status_code == 400
    assert response.json() == FAILED
    rotated = await client.post(
        "/crypto/rotate", json={"ciphertext": ciphertext}, headers=auth("bob")
    )
    assert rotated.status_code == 400 and rotated.json() == FAILED
    failures = [e for e in audit_log.lines() if e.get("audit") == "crypto.decryption_failed"]
    assert [(e["user"], e["operation"], e["reason"]) for e in failures] == [
        ("bob", "decrypt", "not_authentic"),
        ("bob", "rotate", "not_authentic"),
    ]


async def test_an_admin_cannot_decrypt_a_users_data(client: httpx.AsyncClient, auth: Auth) -> None:
    ciphertext = await encrypt(client, auth("alice"), "private")
    response = await decrypt(client, auth("admin", role="admin"), ciphertext)
    assert response.status_code == 400 and response.json() == FAILED


async def test_the_same_subject_decrypts_with_any_of_its_tokens(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    ciphertext = await encrypt(client, auth("alice"), "kept")
    response = await decrypt(client, auth("alice"), ciphertext)  # a new token, new jti
    assert response.json() == {"plaintext": "kept"}


async def test_a_re_created_user_name_does_not_decrypt_the_old_owners_data(
    client: httpx.AsyncClient, auth: Auth, audit_log: Any
) -> None:
    """alice is deleted and a new alice created: the new one has another ``uid`` and gets
    the same 400 for the old alice's ciphertext as any other user."""
    old_alice = auth("alice", uid="a1" * 16)
    ciphertext = await encrypt(client, old_alice, "the first alice's secret")
    new_alice = auth("alice", uid="b2" * 16)
    response = await decrypt(client, new_alice, ciphertext)
    assert response.status_code == 400 and response.json() == FAILED
    rotated = await client.post(
        "/crypto/rotate", json={"ciphertext": ciphertext}, headers=new_alice
    )
    assert rotated.status_code == 400 and rotated.json() == FAILED
    assert (await decrypt(client, old_alice, ciphertext)).json() == {
        "plaintext": "the first alice's secret"
    }
    failures = [e for e in audit_log.lines() if e.get("audit") == "crypto.decryption_failed"]
    assert [(e["user"], e["uid"], e["reason"]) for e in failures] == [
        ("alice", "b2" * 16, "not_authentic"),
        ("alice", "b2" * 16, "not_authentic"),
    ]


async def test_name_key_ciphertexts_decrypt_only_for_a_legacy_owner(
    client: httpx.AsyncClient, auth: Auth, keyring_path: Path
) -> None:
    """A ciphertext made before user ids (under the key derived from the user name) keeps
    decrypting for that user, whose tokens carry ``legacy_owner_keys``; a user created
    later under the same name (no such claim) gets the 400. ``rotate`` moves the old
    ciphertext onto the id key."""
    keyring = load_keyring(keyring_path)
    legacy_key = MultiFernet(
        Fernet(derive_owner_key(k.material, "alice", LEGACY_HKDF_INFO_PREFIX)) for k in keyring.keys
    )
    old = legacy_key.encrypt(b"made before ids").decode()
    legacy_alice = auth("alice", uid="c3" * 16, legacy_owner_keys=True)
    assert (await decrypt(client, legacy_alice, old)).json() == {"plaintext": "made before ids"}
    for newcomer in (
        auth("alice", uid="d4" * 16),
        auth("alice", uid="d4" * 16, legacy_owner_keys=False),
    ):
        response = await decrypt(client, newcomer, old)
        assert response.status_code == 400 and response.json() == FAILED
    # Another legacy user's name keys are not alice's.
    response = await decrypt(client, auth("bob", uid="e5" * 16, legacy_owner_keys=True), old)
    assert response.status_code == 400
    # New data of the legacy user is bound to the id, not to the name.
    fresh = await encrypt(client, legacy_alice, "made after")
    with pytest.raises(InvalidToken):
        legacy_key.decrypt(fresh.encode())
    assert (await decrypt(client, auth("alice", uid="c3" * 16), fresh)).status_code == 200
    moved = await client.post("/crypto/rotate", json={"ciphertext": old}, headers=legacy_alice)
    assert moved.status_code == 200
    id_only = auth("alice", uid="c3" * 16)  # the same user, without the name keys
    assert (await decrypt(client, id_only, moved.json()["ciphertext"])).json() == {
        "plaintext": "made before ids"
    }
    assert (await decrypt(client, id_only, old)).status_code == 400


def _flip(ciphertext: str, index: int) -> str:
    raw = bytearray(base64.urlsafe_b64decode(ciphertext))
    raw[index] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda c: _flip(c, 30), "not_authentic"),  # ciphertext byte
        (lambda c: _flip(c, 5), "not_authentic"),  # timestamp byte
        (lambda c: _flip(c, -1), "not_authentic"),  # HMAC byte
        (lambda c: _flip(c, 0), "malformed"),  # version byte
        (lambda c: c[:-8], "malformed"),  # truncated
        (
            lambda c: base64.urlsafe_b64encode(base64.urlsafe_b64decode(c)[:-16]).decode(),
            "not_authentic",
        ),  # a whole block cut: the shape is right, the HMAC is not
        (lambda c: "", "malformed"),
        (lambda c: "A" * 200_000, "malformed"),  # huge
        (lambda c: "not a fernet token", "malformed"),
        (lambda c: c + "====", "malformed"),
        (lambda c: c.replace("-", "+").replace("_", "/") + "+", "malformed"),
    ],
)
async def test_bad_ciphertexts_fail_the_same_way(
    client: httpx.AsyncClient,
    auth: Auth,
    audit_log: Any,
    mangle: Callable[[str], str],
    reason: str,
) -> None:
    alice = auth("alice")
    secret = "do-not-log-this-plaintext"
    ciphertext = await encrypt(client, alice, secret)
    bad = mangle(ciphertext)
    for path in ("/crypto/decrypt", "/decrypt/", "/crypto/rotate"):
        response = await client.post(path, json={"ciphertext": bad}, headers=alice)
        assert response.status_code == 400, path
        assert response.json() == FAILED
    events = [e for e in audit_log.lines() if e.get("audit") == "crypto.decryption_failed"]
    assert len(events) == 3
    assert all(e["user"] == "alice" and e["reason"] == reason for e in events)
    raw = audit_log.raw()
    assert secret not in raw
    assert ciphertext[20:60] not in raw
    if bad:
        assert bad[:60] not in raw


async def test_expired_ttl_fails(
    client: httpx.AsyncClient, auth: Auth, audit_log: Any, keyring_path: Path
) -> None:
    # A ciphertext made an hour ago, with the service's own keys for alice.
    keyring = load_keyring(keyring_path)
    old = (
        keyring.for_owner(default_uid("alice"))
        .encrypt_at_time(b"old", int(time.time()) - 3600)
        .decode()
    )
    alice = auth("alice")
    assert (await decrypt(client, alice, old, ttl=7200)).json() == {"plaintext": "old"}
    response = await decrypt(client, alice, old, ttl=60)
    assert response.status_code == 400 and response.json() == FAILED
    assert (await decrypt(client, alice, old)).json() == {"plaintext": "old"}
    future = (
        keyring.for_owner(default_uid("alice"))
        .encrypt_at_time(b"f", int(time.time()) + 3600)
        .decode()
    )
    response = await decrypt(client, alice, future, ttl=60)
    assert response.status_code == 400
    reasons = [e["reason"] for e in audit_log.lines() if e.get("audit")]
    assert reasons == ["expired", "future_timestamp"]


async def test_fresh_ciphertext_passes_a_ttl(client: httpx.AsyncClient, auth: Auth) -> None:
    alice = auth("alice")
    ciphertext = await encrypt(client, alice, "fresh")
    assert (await decrypt(client, alice, ciphertext, ttl=1)).json() == {"plaintext": "fresh"}


async def test_a_whole_ttl_written_as_a_float_is_that_integer(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    """60.0 is an integer to JSON Schema, so the document calls it valid: the service
    agrees (tests/security/test_fuzz.py found it refused with 422)."""
    alice = auth("alice")
    ciphertext = await encrypt(client, alice, "fresh")
    assert (await decrypt(client, alice, ciphertext, ttl=60.0)).json() == {"plaintext": "fresh"}
    # ... and the document still states the bounds the service enforces.
    ttl = DecryptRequest.model_json_schema()["properties"]["ttl"]["anyOf"][0]
    assert ttl == {"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/crypto/encrypt", {"plaintext": "x", "extra": 1}),
        ("/crypto/encrypt", {"plaintext": 5}),
        ("/crypto/encrypt", {"plaintext": None}),
        ("/crypto/encrypt", {"plaintext": ["x"]}),
        ("/crypto/encrypt", {}),
        ("/encrypt/", {"text": "x"}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": 0}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": -5}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": 1.5}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": 1e30}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": 0.0}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": "60"}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": True}),
        ("/crypto/decrypt", {"ciphertext": "x", "ttl": 10**20}),
        ("/crypto/decrypt", {"ciphertext": 12}),
        ("/crypto/decrypt", {"ciphertext": "x", "key": "y"}),
        ("/crypto/rotate", {"ciphertext": "x", "ttl": 5}),
        ("/decrypt/", {"plaintext": "x"}),
    ],
)
async def test_strict_schemas(
    client: httpx.AsyncClient, auth: Auth, path: str, body: dict[str, object]
) -> None:
    response = await client.post(path, json=body, headers=auth("alice"))
    assert response.status_code == 422
    assert '"input"' not in response.text  # the offending value is never echoed


async def test_not_json_is_422(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = {**auth("alice"), "Content-Type": "application/json"}
    response = await client.post("/crypto/encrypt", content=b"{nope", headers=headers)
    assert response.status_code == 422


async def test_plaintext_limits(client: httpx.AsyncClient, auth: Auth) -> None:
    alice = auth("alice")
    response = await client.post("/crypto/encrypt", json={"plaintext": "x" * 65_537}, headers=alice)
    assert response.status_code == 422
    assert "65536" in response.json()["detail"]
    # The limit counts UTF-8 bytes, not characters: 21,846 * 3 bytes > 64 KiB.
    response = await client.post("/crypto/encrypt", json={"plaintext": "€" * 21_846}, headers=alice)
    assert response.status_code == 422
    # A lone surrogate is not UTF-8 text.
    headers = {**alice, "Content-Type": "application/json"}
    response = await client.post(
        "/crypto/encrypt", content=b'{"plaintext": "a\\ud800b"}', headers=headers
    )
    assert response.status_code == 422
    assert response.json() == {"detail": "plaintext must be valid UTF-8 text"}


async def test_configured_plaintext_limit(
    keyring_path: Path,
    make_settings: Callable[..., CryptoSettings],
    auth: Auth,
    audit_log: Any,
    served: Any,
) -> None:
    async with served(create_app(make_settings(max_plaintext_bytes=10))) as client:
        alice = auth("alice")
        ok = await client.post("/crypto/encrypt", json={"plaintext": "0123456789"}, headers=alice)
        assert ok.status_code == 200
        big = await client.post("/crypto/encrypt", json={"plaintext": "01234567890"}, headers=alice)
        assert big.status_code == 422
        # An authentic ciphertext longer than any this configuration issues is refused by shape.
        alice_keys = load_keyring(keyring_path).for_owner(default_uid("alice"))
        longer = alice_keys.encrypt(b"x" * 16).decode()
        response = await decrypt(client, alice, longer)
        assert response.status_code == 400 and response.json() == FAILED
    [event] = audit_log.lines()
    assert (event["reason"], event["shape"]) == ("malformed", "too_long")


def test_a_plaintext_limit_whose_ciphertexts_exceed_the_body_cap_is_refused(
    make_settings: Callable[..., CryptoSettings],
) -> None:
    with pytest.raises(ValueError, match="MG_MAX_BODY_BYTES"):
        make_settings(max_plaintext_bytes=1_000_000)


async def test_tokens_and_scopes(client: httpx.AsyncClient, auth: Auth) -> None:
    body = {"plaintext": "x"}
    response = await client.post("/crypto/encrypt", json=body)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    bad = {"Authorization": "Bearer not.a.token"}
    assert (await client.post("/crypto/encrypt", json=body, headers=bad)).status_code == 401
    expired = auth("alice", exp=int(time.time()) - 3600)
    assert (await client.post("/crypto/encrypt", json=body, headers=expired)).status_code == 401

    encrypt_only = auth("alice", scope="crypto:encrypt")
    decrypt_only = auth("alice", scope="crypto:decrypt")
    ciphertext = await encrypt(client, encrypt_only, "scoped")
    assert (await decrypt(client, encrypt_only, ciphertext)).status_code == 403
    assert (await decrypt(client, decrypt_only, ciphertext)).status_code == 200
    response = await client.post("/crypto/encrypt", json=body, headers=decrypt_only)
    assert response.status_code == 403
    assert 'scope="crypto:encrypt"' in response.headers["www-authenticate"]
    for headers in (encrypt_only, decrypt_only):
        response = await client.post(
            "/crypto/rotate", json={"ciphertext": ciphertext}, headers=headers
        )
        assert response.status_code == 403
    models_only = auth("alice", scope="models:read models:predict")
    assert (await client.post("/encrypt/", json=body, headers=models_only)).status_code == 403


async def test_rotation_without_restart(
    client: httpx.AsyncClient, auth: Auth, keyring_path: Path
) -> None:
    alice = auth("alice")
    before = [await encrypt(client, alice, f"value {n}") for n in range(3)]

    add_key(keyring_path)  # what `modelgate keys rotate-fernet` does
    for n, ciphertext in enumerate(before):
        assert (await decrypt(client, alice, ciphertext)).json() == {"plaintext": f"value {n}"}
    after = await encrypt(client, alice, "new")
    rotated = []
    for ciphertext in before:
        response = await client.post(
            "/crypto/rotate", json={"ciphertext": ciphertext}, headers=alice
        )
        assert response.status_code == 200
        rotated.append(response.json()["ciphertext"])
        assert rotated[-1] != ciphertext

    retire_key(keyring_path)  # what `modelgate keys retire-fernet` does
    for n, ciphertext in enumerate(rotated):
        assert (await decrypt(client, alice, ciphertext)).json() == {"plaintext": f"value {n}"}
    assert (await decrypt(client, alice, after)).json() == {"plaintext": "new"}
    for ciphertext in before:  # never rotated: gone with the retired key
        response = await decrypt(client, alice, ciphertext)
        assert response.status_code == 400 and response.json() == FAILED


async def test_rotate_keeps_the_original_timestamp(
    client: httpx.AsyncClient, auth: Auth, keyring_path: Path
) -> None:
    keyring = load_keyring(keyring_path)
    old = (
        keyring.for_owner(default_uid("alice"))
        .encrypt_at_time(b"aged", int(time.time()) - 3600)
        .decode()
    )
    add_key(keyring_path)
    alice = auth("alice")
    response = await client.post("/crypto/rotate", json={"ciphertext": old}, headers=alice)
    rotated = response.json()["ciphertext"]
    assert (await decrypt(client, alice, rotated, ttl=60)).status_code == 400
    assert (await decrypt(client, alice, rotated, ttl=7200)).json() == {"plaintext": "aged"}


async def test_two_app_instances_share_the_keyring(
    client: httpx.AsyncClient,
    auth: Auth,
    make_settings: Callable[..., CryptoSettings],
    served: Any,
) -> None:
    """Like two workers, or a restart: a second app decrypts what the first made."""
    alice = auth("alice")
    ciphertext = await encrypt(client, alice, "shared")
    async with served(create_app(make_settings())) as other:
        assert (await decrypt(other, alice, ciphertext)).json() == {"plaintext": "shared"}


async def test_health_reports_the_keyring(client: httpx.AsyncClient, keyring_path: Path) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    check = response.json()["checks"]["fernet_keyring"]
    assert check == {"status": "ok", "detail": "1 keys, newest id 1"}
    key = load_keyring(keyring_path).newest.as_json()["key"]
    assert key not in response.text
    write_private(keyring_path, "broken")
    response = await client.get("/health/ready")
    assert response.json()["checks"]["fernet_keyring"]["status"] == "degraded"


async def test_without_a_keyring_crypto_is_unavailable(
    secrets_dir: Path, make_settings: Callable[..., CryptoSettings], auth: Auth, served: Any
) -> None:
    """The service never creates a keyring itself: workers would each make their own."""
    async with served(create_app(make_settings())) as client:
        response = await client.post(
            "/crypto/encrypt", json={"plaintext": "x"}, headers=auth("alice")
        )
        assert response.status_code == 503
        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["fernet_keyring"]["status"] == "fail"
    assert not any(entry.name.endswith(".json") for entry in os.scandir(secrets_dir))


async def test_decryption_failures_are_counted_by_reason(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    def count(text: str) -> float:
        for line in text.splitlines():
            if line.startswith('modelgate_decryption_failures_total{reason="malformed"}'):
                return float(line.split()[-1])
        return 0.0

    before = count((await client.get("/metrics")).text)
    await decrypt(client, auth("alice"), "garbage")
    after = count((await client.get("/metrics")).text)
    assert after == before + 1
